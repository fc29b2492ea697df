// Settings and policies (admins only): what the project's VM may use and what may run in it.

import { api, projectPath } from "../api.js";
import { field, h, toast } from "../dom.js";

// [key, label, kind, hint]; kinds: number, optional-number, choice:<a|b>, lines, env
const RESOURCES = [
  ["auto_sleep_minutes", "Sleep after idle (minutes)", "number", "0 = never"],
  ["max_storage_gb", "Workspace size limit (GB)", "number"],
  ["cpus", "CPUs", "optional-number", "empty = the driver's default"],
  ["memory_mb", "Memory (MiB)", "optional-number", "empty = the driver's default"],
  ["pids_limit", "Processes", "optional-number", "empty = the driver's default"],
  ["max_concurrent_executions", "Commands at once", "number", "more wait in the queue"],
  ["network", "Network", "choice:none|egress", "egress lets the VM reach the network"],
  ["monthly_budget_usd", "Monthly budget (USD)", "optional-number", "metered drivers only; empty = none"],
  ["budget_action", "At 100 % of the budget", "choice:warn|stop"],
];
const POLICIES = [
  ["allowed_tools", "Allowed operations", "lines", "one per line (e.g. read_file); empty = all"],
  ["command_allowlist", "Command allowlist", "lines", "shell patterns, one per line; empty = any command"],
  ["command_denylist", "Command denylist", "lines", "shell patterns, one per line"],
  ["environment_variables", "Environment variables", "env", "NAME=value, one per line"],
];

function control(key, kind, value) {
  if (kind.startsWith("choice:")) {
    return h("select", { name: key }, kind.slice(7).split("|").map((c) => h("option", { value: c, selected: c === value }, c)));
  }
  if (kind === "lines") return h("textarea", { name: key, rows: "3", spellcheck: "false", value: (value ?? []).join("\n") });
  if (kind === "env") {
    const text = Object.entries(value ?? {}).map(([k, v]) => `${k}=${v}`).join("\n");
    return h("textarea", { name: key, rows: "3", spellcheck: "false", value: text });
  }
  return h("input", { name: key, type: "number", step: "any", min: "0", value: value ?? "" });
}

function read(kind, element) {
  const text = element.value;
  if (kind === "number") return Number(text);
  if (kind === "optional-number") return text.trim() === "" ? null : Number(text);
  if (kind === "lines") return text.split("\n").map((l) => l.trim()).filter(Boolean);
  if (kind === "env") {
    const env = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf("=");
      if (at < 1) throw new Error(`"${line}" is not NAME=value`);
      env[line.slice(0, at).trim()] = line.slice(at + 1);
    }
    return env;
  }
  return text;
}

export function settingsPanel(context) {
  const element = h("div", { class: "panel-settings" });
  const controls = new Map();
  let current = {};
  let shownFor = null; // re-drawn only when the settings or the access change: edits stay

  function render() {
    const project = context.project();
    const key = JSON.stringify([context.isAdmin(), project.settings]);
    if (key === shownFor) return;
    shownFor = key;
    if (!context.isAdmin()) {
      element.replaceChildren(h("h2", {}, "Settings"), h("p", { class: "muted" }, "Only the project's admins see and change its settings."));
      return;
    }
    current = project.settings;
    controls.clear();
    const group = (title, specs) => h("fieldset", {}, h("legend", {}, title),
      h("div", { class: "field-grid" }, specs.map(([key, label, kind, hint]) => {
        const input = control(key, kind, current[key]);
        controls.set(key, [kind, input]);
        return field(label, input, hint);
      })));
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const form = h("form", { class: "card settings-form" },
      group("Resources", RESOURCES), group("Policies", POLICIES), error,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save settings")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const changed = {};
      try {
        for (const [key, [kind, input]] of controls) {
          const value = read(kind, input);
          if (JSON.stringify(value) !== JSON.stringify(current[key])) changed[key] = value;
        }
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        return;
      }
      if (!Object.keys(changed).length) {
        toast("Nothing changed.");
        return;
      }
      try {
        await api("PATCH", projectPath(context.projectId, "/settings"), { json: changed });
        toast(`Saved: ${Object.keys(changed).join(", ")}.`);
        context.reload();
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
      }
    });
    element.replaceChildren(h("h2", {}, "Settings and policies"), form);
  }

  render();
  return {
    element,
    onProject: render,
    dispose() {},
  };
}
