// An interactive terminal in the project's VM: xterm.js (vendored, loaded only when a terminal
// is opened) attached to the project WebSocket's "terminal" stream.
//
//   out: {stream: "terminal", type: "open", cols, rows} -> ack {result: {<id field>: ...}}
//        {stream: "terminal", type: "input" | "resize" | "close", <id field>, data | cols, rows}
//   in:  {stream: "terminal", type: "output", <id field>, data}  {type: "exit", exit_code}
//
// The id field is whichever of ID_FIELDS the server's ack names. Offered only when the
// server's hello lists the "terminal" stream.

import { h, toast } from "../dom.js";

const ID_FIELDS = ["terminal_id", "term_id", "execution_id"];
const XTERM = "/ui/assets/vendor/xterm/xterm.mjs";
const FIT = "/ui/assets/vendor/addon-fit/addon-fit.mjs";
const XTERM_CSS = "/ui/assets/vendor/xterm/xterm.css";
const LEAVE_KEY = "F6";

let xterm = null;

async function loadXterm() {
  if (!xterm) {
    if (!document.querySelector(`link[href="${XTERM_CSS}"]`)) {
      document.head.append(h("link", { rel: "stylesheet", href: XTERM_CSS }));
    }
    const [{ Terminal }, { FitAddon }] = await Promise.all([import(XTERM), import(FIT)]);
    xterm = { Terminal, FitAddon };
  }
  return xterm;
}

function outputText(message) {
  if (message.encoding === "base64" || message.data_b64 !== undefined) {
    const raw = atob(message.data_b64 ?? message.data ?? "");
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }
  return message.data ?? "";
}

export function terminalPanel(context) {
  const { socket } = context;
  const status = h("p", { class: "muted", "aria-live": "polite" });
  const openButton = h("button", { type: "button", class: "primary" }, "Open a terminal");
  const closeButton = h("button", { type: "button", class: "danger", hidden: true }, "Close terminal");
  const screen = h("div", { class: "terminal-screen", hidden: true });
  const help = h("p", { class: "muted small", hidden: true },
    `Keys go to the terminal while it has focus; press ${LEAVE_KEY} to move focus out of it.`);
  const element = h("div", { class: "panel-terminal" },
    h("div", { class: "page-head" }, h("h2", {}, "Terminal"), h("div", { class: "row-actions" }, openButton, closeButton)),
    status, help, screen);

  let session = null; // {term, fit, id, idField, stop, observer}

  function available() {
    return socket.streams.includes("terminal");
  }

  function describe() {
    if (session) return;
    if (socket.state !== "open") {
      status.textContent = "Connecting…";
      openButton.disabled = true;
    } else if (!available()) {
      status.textContent = `This server offers no terminals yet (its WebSocket carries: ${socket.streams.join(", ")}).`;
      openButton.disabled = true;
    } else if (!context.canWrite()) {
      status.textContent = "Opening a terminal needs read-write access to the project.";
      openButton.disabled = true;
    } else {
      status.textContent = "A shell in the project's VM, as this agent; it is recorded in the history.";
      openButton.disabled = false;
    }
  }

  async function open() {
    openButton.disabled = true;
    status.textContent = "Opening…";
    try {
      const { Terminal, FitAddon } = await loadXterm();
      screen.hidden = false;
      const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000 });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(screen);
      fit.fit();
      const result = await socket.send({ stream: "terminal", type: "open", cols: term.cols, rows: term.rows });
      const idField = ID_FIELDS.find((name) => result?.[name]) ?? "terminal_id";
      const id = result?.[idField];
      const stop = socket.on("terminal", (message) => {
        if (message[idField] !== id) return;
        if (message.type === "output") term.write(outputText(message));
        else if (message.type === "exit") ended(`The terminal ended${message.exit_code != null ? ` (exit code ${message.exit_code})` : ""}.`);
      });
      const stopState = socket.on("state", ({ state }) => {
        if (state !== "open") ended("The connection dropped, which closed the terminal; open a new one.");
      });
      term.onData((data) => socket.post({ stream: "terminal", type: "input", [idField]: id, data }));
      term.onResize(({ cols, rows }) => socket.post({ stream: "terminal", type: "resize", [idField]: id, cols, rows }));
      term.attachCustomKeyEventHandler((event) => {
        if (event.key === LEAVE_KEY && event.type === "keydown") {
          event.preventDefault();
          closeButton.focus();
          return false;
        }
        return true;
      });
      const observer = new ResizeObserver(() => fit.fit());
      observer.observe(screen);
      session = { term, id, idField, stop: () => { stop(); stopState(); observer.disconnect(); } };
      openButton.hidden = true;
      closeButton.hidden = false;
      help.hidden = false;
      status.textContent = "Connected.";
      screen.dataset.terminal = String(id);
      term.focus();
    } catch (error) {
      status.textContent = `Could not open a terminal: ${error.message}`;
      screen.hidden = true;
      screen.replaceChildren();
      openButton.disabled = false;
    }
  }

  function ended(message) {
    if (!session) return;
    session.stop();
    session.term.options.disableStdin = true;
    session = null;
    status.textContent = message;
    closeButton.hidden = true;
    openButton.hidden = false;
    help.hidden = true;
    describe();
    status.textContent = message;
  }

  async function close() {
    if (!session) return;
    const { id, idField, term } = session;
    try {
      await socket.send({ stream: "terminal", type: "close", [idField]: id });
    } catch (error) {
      toast(`Closing the terminal: ${error.message}`, "error");
    }
    ended("Terminal closed.");
    term.dispose();
    screen.replaceChildren();
    screen.hidden = true;
    openButton.focus();
  }

  openButton.addEventListener("click", open);
  closeButton.addEventListener("click", close);
  const stopDescribing = socket.on("state", describe);
  describe();

  return {
    element,
    onShow: describe,
    onProject: describe,
    dispose() {
      stopDescribing();
      if (session) {
        socket.post({ stream: "terminal", type: "close", [session.idField]: session.id });
        session.stop();
        session.term.dispose();
        session = null;
      }
    },
  };
}
