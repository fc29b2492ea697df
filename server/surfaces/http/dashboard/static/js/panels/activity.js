// The live event feed: who did what in the project, as it happens (the project WebSocket's
// events stream, resumed after a reconnect from the last event seen: nothing lost or twice).

import { field, h } from "../dom.js";
import { bytes, duration, when } from "../format.js";
import { outputView } from "./output.js";

const KEPT = 500; // entries on the page; older ones drop off the end

export function activityPanel(context) {
  const list = h("ol", { class: "feed", reversed: true, "aria-label": "Events, newest first" });
  const only = h("select", { name: "only" },
    h("option", { value: "" }, "everything"),
    h("option", { value: "execution." }, "commands"),
    h("option", { value: "file." }, "files"),
    h("option", { value: "member." }, "members"),
    h("option", { value: "vm." }, "the VM"));
  const empty = h("p", { class: "muted" }, "Nothing has happened yet.");
  const outputs = h("div", { class: "outputs" });
  const element = h("div", { class: "panel-activity" },
    h("div", { class: "page-head" }, h("h2", {}, "Live activity"), field("Show", only)),
    outputs,
    empty,
    list);
  const commands = new Map(); // execution id -> {command, agent}
  let open = null;

  only.addEventListener("change", () => {
    for (const item of list.children) item.hidden = !matches(item.dataset.kind);
  });

  function matches(kind) {
    return !only.value || kind.startsWith(only.value);
  }

  function showOutput(executionId) {
    open?.dispose();
    const known = commands.get(executionId) ?? {};
    open = outputView(context, executionId, { command: known.command, agentId: known.agent, onClose: () => { open = null; } });
    outputs.replaceChildren(open.element);
  }

  function describe(event) {
    const d = event.data ?? {};
    const code = (text) => h("code", {}, text);
    const execution = (id) => commands.get(id)?.command ?? id;
    switch (event.kind) {
      case "project.created": return ["created the project ", code(d.name)];
      case "project.deleted": return ["deleted the project"];
      case "settings.updated": return ["changed the settings: ", Object.keys(d.changed ?? {}).join(", ")];
      case "member.assigned": return ["gave ", h("strong", {}, d.member), ` ${String(d.access_level).replace("_", "-")} access`];
      case "member.removed": return d.member === event.agent_id ? ["left the project"] : ["removed ", h("strong", {}, d.member)];
      case "vm.status": return [`VM ${d.status}`, d.reason ? ` — ${d.reason}` : ""];
      case "vm.recreated": return [`VM re-created (${d.lost})`];
      case "vm.recovered": return [`VM recovered from ${d.was}: ${d.reason}`];
      case "vm.slept": return [`VM went to sleep after ${duration(Math.round(d.idle_s * 1000))} idle`];
      case "vm.woken": return ["VM woke up"];
      case "execution.queued": return ["ran ", code(d.command)];
      case "execution.started": return ["started ", code(execution(d.execution_id)), d.queued_ms ? ` after ${duration(d.queued_ms)} in the queue` : ""];
      case "execution.finished": {
        const exit = d.exit_code === null || d.exit_code === undefined ? "" : `, exit code ${d.exit_code}`;
        return [code(execution(d.execution_id)), ` ${d.status}${exit} in ${duration(d.duration_ms)}`, d.reason ? ` — ${d.reason}` : ""];
      }
      case "file.written": return ["wrote ", code(d.path), ` (${bytes(d.size)})`];
      case "file.edited": return ["edited ", code(d.path), ` (${d.replacements} replacement${d.replacements === 1 ? "" : "s"})`];
      case "file.moved": return ["moved ", code(d.source), " to ", code(d.path)];
      case "file.deleted": return ["deleted ", code(d.path)];
      case "lock.acquired": return ["locked ", code(d.path || "the whole workspace"), ` until ${when(d.expires_at)}`];
      case "lock.released": return ["unlocked ", code(d.path || "the whole workspace")];
      case "budget.warning": return [`budget warning: $${d.spent_usd} of $${d.budget_usd} (${d.percent} %) in ${d.month}`];
      case "budget.stopped": return [`stopped for the budget: $${d.spent_usd} of $${d.budget_usd} in ${d.month}`];
      default: return [event.kind, " ", code(JSON.stringify(d))];
    }
  }

  function add(event) {
    const d = event.data ?? {};
    if (event.kind === "execution.queued") commands.set(d.execution_id, { command: d.command, agent: event.agent_id });
    const outputButton = d.execution_id && event.kind.startsWith("execution.")
      ? h("button", {
          type: "button",
          class: "quiet small",
          "aria-label": `Output of ${commands.get(d.execution_id)?.command ?? d.execution_id}`,
          onclick: () => showOutput(d.execution_id),
        }, "Output")
      : null;
    const item = h("li", { class: `event kind-${event.kind.replace(".", "-")}`, dataset: { kind: event.kind, eventId: String(event.event_id) }, hidden: !matches(event.kind) },
      h("time", { datetime: event.created_at }, when(event.created_at)),
      h("span", { class: "who" }, event.agent_id ?? "ProjectVM"),
      h("span", { class: "what" }, describe(event)),
      outputButton);
    list.prepend(item);
    while (list.children.length > KEPT) list.lastElementChild.remove();
    empty.hidden = true;
  }

  return {
    element,
    showOutput,
    onEvent: add,
    dispose() {
      open?.dispose();
    },
  };
}
