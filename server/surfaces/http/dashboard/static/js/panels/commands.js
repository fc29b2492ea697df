// Commands: run one, the execution history with filters, and any run's output (live while it
// runs).

import { api, onlyRefusals, projectPath } from "../api.js";
import { badge, debounce, field, fill, h, toast } from "../dom.js";
import { duration, when } from "../format.js";
import { outputView } from "./output.js";

const STATUSES = ["completed", "failed", "timed_out", "cancelled", "killed", "interrupted", "running", "queued"];
const PAGE = 25;

export function commandsPanel(context) {
  const { projectId, socket } = context;
  const command = h("input", { name: "command", autocomplete: "off", spellcheck: "false", required: true, placeholder: "make test" });
  const runForm = h(
    "form",
    { class: "card inline-form run-form", "aria-label": "Run a command" },
    field("Run a command in the VM", command),
    h("button", { type: "submit", class: "primary" }, "Run"),
  );
  const agent = h("select", { name: "agent" }, h("option", { value: "" }, "everyone"));
  const status = h("select", { name: "status" }, h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s }, s.replace("_", " "))));
  const filters = h("form", { class: "filters", "aria-label": "Filter the history" },
    field("Agent", agent), field("Status", status));
  const rows = h("tbody");
  const table = h("table", { class: "history responsive" },
    h("caption", { class: "visually-hidden" }, "Execution history, newest first"),
    h("thead", {}, h("tr", {}, ["Started", "Agent", "Command", "Status", "Exit", "Took", ""].map((t) => h("th", { scope: "col" }, t)))),
    rows);
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Show older");
  const empty = h("p", { class: "muted", hidden: true }, "No commands match.");
  const outputs = h("div", { class: "outputs" });
  const element = h("div", { class: "panel-commands" },
    runForm,
    outputs,
    h("h2", {}, "History"),
    filters,
    h("div", { class: "table-wrap" }, table),
    empty,
    more,
  );

  let cursor = null;
  let open = null;

  function showOutput(executionId, details = {}) {
    open?.dispose();
    open = outputView(context, executionId, { ...details, onClose: () => { open = null; } });
    outputs.replaceChildren(open.element);
    open.element.querySelector("h3").setAttribute("tabindex", "-1");
    open.element.scrollIntoView({ block: "nearest" });
  }

  function row(execution) {
    // A terminal is an execution too (who opened it, for how long), but not a command with
    // an output to replay: it is shown, not opened here.
    const terminal = execution.kind === "terminal";
    return h("tr", { dataset: { execution: execution.execution_id } },
      h("td", { "data-label": "Started" }, when(execution.started_at ?? execution.queued_at)),
      h("td", { "data-label": "Agent" }, execution.agent_id),
      h("td", { "data-label": "Command" }, terminal ? h("span", { class: "badge" }, "terminal") : null,
        h("code", { class: "command" }, execution.command)),
      h("td", { "data-label": "Status" }, badge(execution.status, execution.status.replace("_", " "))),
      h("td", { "data-label": "Exit" }, execution.exit_code ?? "—"),
      h("td", { "data-label": "Took" }, duration(execution.duration_ms)),
      h("td", {}, terminal ? null : h("button", {
        type: "button",
        class: "quiet",
        "aria-label": `Output of ${execution.command}`,
        onclick: () => showOutput(execution.execution_id, { command: execution.command, agentId: execution.agent_id }),
      }, "Output")));
  }

  async function load({ append = false } = {}) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (agent.value) query.set("agent_id", agent.value);
    if (status.value) query.set("status", status.value);
    if (append && cursor) query.set("cursor", cursor);
    try {
      const page = await api("GET", projectPath(projectId, `/history?${query}`));
      const made = page.executions.map(row);
      if (append) rows.append(...made);
      else fill(rows, made);
      cursor = page.next_cursor;
      more.hidden = !page.has_more;
      empty.hidden = rows.children.length > 0;
    } catch (error) {
      toast(`Could not read the history: ${error.message}`, "error");
    }
  }

  async function loadAgents() {
    try {
      const { members } = await api("GET", projectPath(projectId, "/members"));
      const chosen = agent.value;
      fill(agent, h("option", { value: "" }, "everyone"),
        members.map((m) => h("option", { value: m.agent_id, selected: m.agent_id === chosen }, m.agent_id)));
    } catch (error) {
      onlyRefusals(error); // the filter keeps its old choices
    }
  }

  runForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = command.value.trim();
    if (!text) return;
    try {
      const started = await socket.send({ stream: "execution", type: "run", command: text });
      socket.following.set(started.execution_id, 0); // the server follows it for us already
      showOutput(started.execution_id, { command: text, agentId: context.agentId, alreadyFollowing: true });
      command.value = "";
    } catch (error) {
      toast(`Could not run it: ${error.message}`, "error");
    }
  });
  agent.addEventListener("change", () => load());
  status.addEventListener("change", () => load());
  more.addEventListener("click", () => load({ append: true }));
  const refresh = debounce(() => load(), 300);

  function applyAccess() {
    runForm.hidden = !context.canWrite();
  }

  load();
  loadAgents();
  applyAccess();

  return {
    element,
    showOutput,
    onEvent(event) {
      if (event.kind.startsWith("execution.")) refresh();
      if (event.kind.startsWith("member.")) loadAgents();
    },
    onProject: applyAccess,
    dispose() {
      open?.dispose();
    },
  };
}
