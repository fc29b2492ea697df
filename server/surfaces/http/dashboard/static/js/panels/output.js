// One execution's output, replayed from its start and then live while it runs (through the
// project WebSocket, resumed after a reconnect from the last cursor).

import { field, h, toast, uid } from "../dom.js";

const MAX_SHOWN_CHARS = 2_000_000;

// `alreadyFollowing`: the socket follows it already (a command this page just ran).
export function outputView(context, executionId, { command = null, agentId = null, onClose, alreadyFollowing = false } = {}) {
  const { socket } = context;
  const titleId = uid("output-title");
  const text = h("pre", { class: "output", tabindex: "0", "aria-labelledby": titleId });
  const status = h("p", { class: "output-status", "aria-live": "polite" }, "Loading the output…");
  const stdin = h("input", { autocomplete: "off", spellcheck: "false" });
  const stdinForm = h(
    "form",
    { class: "inline-form", hidden: true },
    field("Send a line to its stdin", stdin),
    h("button", { type: "submit" }, "Send"),
    h("button", { type: "button", class: "quiet", onclick: () => sendInput("", true) }, "Close stdin"),
  );
  const cancel = h("button", { type: "button", class: "danger", hidden: true, onclick: cancelIt }, "Cancel command");
  const close = h("button", { type: "button", class: "quiet", onclick: () => { dispose(); onClose?.(); } }, "Close output");
  const root = h(
    "section",
    { class: "output-view card", "aria-labelledby": titleId, dataset: { execution: executionId } },
    h("div", { class: "output-head" },
      h("h3", { id: titleId },
        "Output of ",
        command ? h("code", {}, command) : executionId,
        agentId ? ` by ${agentId}` : ""),
      h("div", { class: "row-actions" }, cancel, close)),
    status,
    text,
    stdinForm,
  );
  let shown = 0;
  let finished = false;

  function show(content, stream) {
    if (!content || shown > MAX_SHOWN_CHARS) return;
    shown += content.length;
    const piece = stream === "stderr" ? h("span", { class: "stderr" }, content) : document.createTextNode(content);
    const atBottom = text.scrollTop + text.clientHeight >= text.scrollHeight - 4;
    text.append(piece);
    if (shown > MAX_SHOWN_CHARS) text.append(h("span", { class: "muted" }, "\n[… more output not shown here; read it through the API]"));
    if (atBottom) text.scrollTop = text.scrollHeight;
  }

  const stop = socket.on("execution", (message) => {
    if (message.execution_id !== executionId) return;
    if (message.type === "output") {
      show(message.stdout, "stdout");
      show(message.stderr, "stderr");
      if (!finished) running();
    } else if (message.type === "exit") {
      finished = true;
      const code = message.exit_code === null || message.exit_code === undefined ? "" : `, exit code ${message.exit_code}`;
      status.textContent = `${message.status}${code}${message.reason ? ` — ${message.reason}` : ""}`;
      status.dataset.state = message.exit_code ? "nonzero" : message.status;
      if (shown === 0) text.append(h("span", { class: "muted" }, "(no output)"));
      cancel.hidden = true;
      stdinForm.hidden = true;
    }
  });

  function running() {
    status.textContent = "running… (output appears as it comes)";
    status.dataset.state = "running";
    cancel.hidden = !context.canWrite();
    stdinForm.hidden = !context.canWrite();
  }

  async function sendInput(data, eof = false) {
    try {
      await socket.send({ stream: "execution", type: "stdin", execution_id: executionId, data, eof });
    } catch (error) {
      toast(`Could not send input: ${error.message}`, "error");
    }
  }

  stdinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sendInput(`${stdin.value}\n`);
    stdin.value = "";
  });

  async function cancelIt() {
    try {
      await socket.send({ stream: "execution", type: "cancel", execution_id: executionId });
      toast("Cancelled.");
    } catch (error) {
      toast(`Could not cancel: ${error.message}`, "error");
    }
  }

  const following = alreadyFollowing ? Promise.resolve() : socket.follow(executionId, 0);
  following.then(() => {
    if (!finished) running();
  }, (error) => {
    status.textContent = `Cannot show this output: ${error.message}`;
  });

  function dispose() {
    stop();
    socket.unfollow(executionId);
    root.remove();
  }

  return { element: root, executionId, dispose };
}
