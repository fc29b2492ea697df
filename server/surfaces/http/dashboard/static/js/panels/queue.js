// Running and queued commands, with their queue positions (1 = starts next).

import { api, projectPath } from "../api.js";
import { badge, debounce, fill, h, toast } from "../dom.js";
import { ago } from "../format.js";

export function queuePanel(context, { showOutput }) {
  const { projectId, socket } = context;
  const summary = h("p", { class: "muted", "aria-live": "polite" });
  const rows = h("tbody");
  const table = h("table", { class: "queue responsive" },
    h("caption", { class: "visually-hidden" }, "Running and queued commands"),
    h("thead", {}, h("tr", {}, ["Position", "Agent", "Command", "Since", ""].map((t) => h("th", { scope: "col" }, t)))),
    rows);
  const refreshButton = h("button", { type: "button", class: "quiet" }, "Refresh");
  const element = h("div", { class: "panel-queue" },
    h("div", { class: "page-head" }, h("h2", {}, "Running and queued"), refreshButton),
    summary,
    h("div", { class: "table-wrap" }, table));

  function row(execution) {
    const running = execution.status === "running";
    const cancel = context.canWrite()
      ? h("button", {
          type: "button",
          class: "danger small",
          "aria-label": `Cancel ${execution.command}`,
          onclick: async () => {
            try {
              await socket.send({ stream: "execution", type: "cancel", execution_id: execution.execution_id });
              toast("Cancelled.");
            } catch (error) {
              toast(`Could not cancel: ${error.message}`, "error");
            }
          },
        }, "Cancel")
      : null;
    return h("tr", { dataset: { execution: execution.execution_id } },
      h("td", { "data-label": "Position" }, running ? badge("running") : badge("queued", `#${execution.queue_position} in queue`)),
      h("td", { "data-label": "Agent" }, execution.agent_id),
      h("td", { "data-label": "Command" }, h("code", { class: "command" }, execution.command)),
      h("td", { "data-label": "Since" }, ago(running ? execution.started_at : execution.queued_at)),
      h("td", {}, h("div", { class: "row-actions" },
        h("button", {
          type: "button",
          class: "quiet small",
          "aria-label": `Output of ${execution.command}`,
          onclick: () => showOutput(execution.execution_id, { command: execution.command, agentId: execution.agent_id }),
        }, "Output"),
        cancel)));
  }

  async function load() {
    try {
      const list = await api("GET", projectPath(projectId, "/executions?state=active"));
      const ordered = [...list.executions].sort((a, b) =>
        (a.status === "running" ? 0 : a.queue_position ?? 1e9) - (b.status === "running" ? 0 : b.queue_position ?? 1e9));
      fill(rows, ordered.map(row));
      const running = ordered.filter((e) => e.status === "running").length;
      const waiting = ordered.length - running;
      const limit = list.max_concurrent_executions;
      summary.textContent = `${running} running${limit ? ` (at most ${limit} at once)` : ""}, ${waiting} waiting.`;
      table.hidden = ordered.length === 0;
    } catch (error) {
      toast(`Could not read the queue: ${error.message}`, "error");
    }
  }

  const refresh = debounce(load, 200);
  refreshButton.addEventListener("click", load);
  load();
  return {
    element,
    onEvent(event) {
      if (event.kind.startsWith("execution.")) refresh();
    },
    onProject: refresh,
    dispose() {},
  };
}
