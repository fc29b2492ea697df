// An interactive terminal in the project's VM: xterm.js (vendored, loaded only when a terminal
// is opened) attached to the project WebSocket's "terminal" stream.
//
//   out: {stream: "terminal", type: "open", cols, rows} -> ack {result: {execution_id, status}}
//        {type: "input", execution_id, data}  {type: "resize", execution_id, cols, rows}
//        {type: "close", execution_id}        {type: "attach", execution_id, since}
//   in:  {type: "output", execution_id, data (base64), next_since}
//        {type: "exit", execution_id, status, exit_code, reason}
//
// A terminal is an execution: it is in the history with its author. After a dropped
// connection the panel attaches again from the last output cursor, so nothing is lost or
// shown twice. Offered only when the server's hello lists the "terminal" stream.

import { h, toast } from "../dom.js";

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

function bytesOf(message) {
  if (message.encoding !== "base64") return message.data ?? "";
  const raw = atob(message.data ?? "");
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
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

  let session = null; // {term, id, since, stop()}
  let lastTerm = null; // kept on the page after it ends, until the next one opens

  function available() {
    return socket.streams.includes("terminal");
  }

  function describe() {
    if (session) return;
    if (socket.state !== "open") {
      status.textContent = "Connecting…";
      openButton.disabled = true;
    } else if (!available()) {
      status.textContent = `This server offers no terminals (its WebSocket carries: ${socket.streams.join(", ")}).`;
      openButton.disabled = true;
    } else if (!context.canWrite()) {
      status.textContent = "Opening a terminal needs read-write access to the project.";
      openButton.disabled = true;
    } else {
      status.textContent = "A shell in the project's VM, as this agent; it is recorded in the history.";
      openButton.disabled = false;
    }
  }

  function started(info) {
    if (info?.status === "queued") {
      status.textContent = `Waiting for a free slot (${info.queue_position ? `#${info.queue_position} in the queue` : "queued"}).`;
    } else {
      status.textContent = `Connected: ${info?.command ?? "a shell"} (${info?.execution_id ?? ""}).`;
    }
  }

  async function open() {
    openButton.disabled = true;
    status.textContent = "Opening…";
    try {
      const { Terminal, FitAddon } = await loadXterm();
      lastTerm?.dispose();
      screen.replaceChildren();
      screen.hidden = false;
      const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000 });
      lastTerm = term;
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(screen);
      fit.fit();
      const info = await socket.send({ stream: "terminal", type: "open", cols: term.cols, rows: term.rows });
      const id = info.execution_id;
      const current = { term, id, since: 0 };
      const stopOutput = socket.on("terminal", (message) => {
        if (message.execution_id !== id) return;
        if (message.type === "output") {
          term.write(bytesOf(message));
          current.since = message.next_since ?? current.since;
          if (status.textContent.startsWith("Waiting")) started({ ...info, status: "running" });
        } else if (message.type === "exit") {
          const code = message.exit_code === null || message.exit_code === undefined ? "" : ` (exit code ${message.exit_code})`;
          ended(`The terminal ended: ${message.status ?? "closed"}${code}${message.reason ? ` — ${message.reason}` : ""}.`);
        }
      });
      // After a dropped connection: pick the output up where it stopped.
      const stopState = socket.on("state", ({ state }) => {
        if (state === "open" && session === current) {
          socket.send({ stream: "terminal", type: "attach", execution_id: id, since: current.since })
            .then(() => { status.textContent = "Reconnected."; })
            .catch((error) => ended(`The terminal is gone: ${error.message}`));
        } else if (state === "reconnecting" && session === current) {
          status.textContent = "The connection dropped; reconnecting to the terminal…";
        } else if (state === "removed") {
          ended("No access to this project any more.");
        }
      });
      term.onData((data) => socket.post({ stream: "terminal", type: "input", execution_id: id, data }));
      term.onResize(({ cols, rows }) => socket.post({ stream: "terminal", type: "resize", execution_id: id, cols, rows }));
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
      current.stop = () => { stopOutput(); stopState(); observer.disconnect(); };
      session = current;
      openButton.hidden = true;
      closeButton.hidden = false;
      help.hidden = false;
      screen.dataset.execution = id;
      started(info);
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
    closeButton.hidden = true;
    openButton.hidden = false;
    help.hidden = true;
    describe();
    status.textContent = message;
  }

  async function close() {
    if (!session) return;
    const { id, term } = session;
    try {
      await socket.send({ stream: "terminal", type: "close", execution_id: id });
    } catch (error) {
      toast(`Closing the terminal: ${error.message}`, "error");
    }
    ended("Terminal closed.");
    term.dispose();
    lastTerm = null;
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
        socket.post({ stream: "terminal", type: "close", execution_id: session.id });
        session.stop();
        session.term.dispose();
        session = null;
      }
    },
  };
}
