// The projects the signed-in agent can see: status, members, usage, cost; create, start,
// stop and delete.

import { api, onlyRefusals, projectPath, session } from "../api.js";
import { confirmAction } from "../dialog.js";
import { badge, field, fill, go, h, toast } from "../dom.js";
import { ago, bytes, usd } from "../format.js";

const TYPES = ["development", "analysis", "deployment", "sandbox"];
const REFRESH_MS = 15000;
// Usage is measured in each VM (the workspace's size included): less often than the list.
const DETAILS_EVERY_MS = 60000;
const DETAIL_CONCURRENCY = 4;

export function projectsPage(main) {
  const rows = h("tbody");
  const table = h(
    "table",
    { class: "projects responsive" },
    h("caption", { class: "visually-hidden" }, "Your projects"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Project", "Type", "Driver", "Status", "Members", "CPU", "Memory", "Disk", "Last activity", "Cost this month", "Actions"]
          .map((name) => h("th", { scope: "col" }, name)),
      ),
    ),
    rows,
  );
  const empty = h("p", { class: "muted", hidden: true },
    "No projects yet. Create one below, or ask a project's admin to add you.");
  const refreshButton = h("button", { type: "button", class: "quiet" }, "Refresh");
  const updated = h("span", { class: "muted small", "aria-live": "off" });

  main.replaceChildren(
    h(
      "div",
      { class: "page" },
      h("div", { class: "page-head" },
        h("h1", { tabindex: "-1" }, "Projects"),
        h("div", { class: "head-actions" }, updated, refreshButton)),
      h("div", { class: "table-wrap" }, table),
      empty,
      createForm(),
    ),
  );

  let timer = null;
  let disposed = false;
  let loading = false;
  const details = new Map(); // project id -> {at (when the read began), members, usage, cost}
  const changedAt = new Map(); // project id -> when this page started or stopped it

  const current = (projectId) => {
    const known = details.get(projectId);
    const fresh = known && Date.now() - known.at < DETAILS_EVERY_MS && known.at >= (changedAt.get(projectId) ?? 0);
    return fresh ? known : null;
  };
  // A listed project with what its last full read said (until the next one).
  const withDetails = (project) => {
    const known = current(project.project_id);
    return known ? { ...project, members: known.members, usage: known.usage, cost: known.cost } : project;
  };

  let again = false;

  async function load() {
    if (disposed) return;
    if (loading) {
      again = true; // once this round ends: something changed during it
      return;
    }
    loading = true;
    try {
      const { projects } = await api("GET", "/projects");
      fill(rows, projects.map((project) => row(withDetails(project))));
      empty.hidden = projects.length > 0;
      table.hidden = projects.length === 0;
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      const stale = projects.filter((p) => !current(p.project_id));
      await readDetails(stale);
    } catch (error) {
      if (error.status !== 401) toast(`Could not list the projects: ${error.message}`, "error");
    } finally {
      loading = false;
    }
    if (again) {
      again = false;
      load();
    }
  }

  // Usage, members and cost come from each project's own record (measured in its VM).
  async function readDetails(projects) {
    const queue = [...projects];
    const worker = async () => {
      while (queue.length && !disposed) {
        const project = queue.shift();
        try {
          const began = Date.now();
          const full = await api("GET", projectPath(project.project_id));
          details.set(full.project_id, { at: began, members: full.members, usage: full.usage, cost: full.cost });
          if (!current(full.project_id)) continue; // read while it was being started or stopped
          const shown = rows.querySelector(`tr[data-project="${CSS.escape(project.project_id)}"]`);
          if (shown) shown.replaceWith(row(full));
        } catch (error) {
          onlyRefusals(error); // it may have been deleted meanwhile; the next refresh says
        }
      }
    };
    await Promise.all(Array.from({ length: DETAIL_CONCURRENCY }, worker));
  }

  function row(project) {
    const admin = project.your_access === "admin";
    const name = project.name;
    const actions = [];
    if (admin && project.status !== "running") {
      actions.push(actionButton("Start", `Start ${name}`, () => lifecycle(project, "start")));
    }
    if (admin && project.status === "running") {
      actions.push(actionButton("Stop", `Stop ${name}`, () => lifecycle(project, "stop")));
    }
    if (admin) {
      actions.push(actionButton("Delete", `Delete ${name}`, () => remove(project), "danger"));
    }
    const usage = project.usage;
    const members = project.members
      ? project.members.map((m) => `${m.agent_id} (${m.access_level.replace("_", "-")})`).join(", ")
      : project.agents.join(", ");
    return h(
      "tr",
      { dataset: { project: project.project_id } },
      cell("Project",
        h("a", { href: `/ui/projects/${encodeURIComponent(project.project_id)}`, "data-route": true }, name),
        h("div", { class: "muted small" }, project.description || project.project_id)),
      cell("Type", project.project_type),
      cell("Driver", project.driver),
      cell("Status", badge(project.status),
        project.status_reason ? h("div", { class: "small muted" }, project.status_reason) : null),
      cell("Members", members),
      cell("CPU", usage?.cpu_percent != null
        ? `${Math.round(usage.cpu_percent)} %${usage.cpu_count ? ` of ${usage.cpu_count} CPUs` : ""}`
        : usageNote(usage)),
      cell("Memory", usage?.memory_used_bytes != null
        ? `${bytes(usage.memory_used_bytes)} of ${bytes(usage.memory_limit_bytes)}` : "—"),
      cell("Disk", usage?.workspace_bytes != null
        ? `${bytes(usage.workspace_bytes)} of ${bytes(usage.max_storage_bytes)}` : "—"),
      cell("Last activity", h("time", { datetime: project.last_activity_at ?? "" }, ago(project.last_activity_at))),
      cell("Cost this month", project.cost
        ? `${usd(project.cost.so_far_usd)} (projected ${usd(project.cost.projected_usd)})`
        : project.usage ? "not metered" : "—"),
      cell("Actions", actions.length ? h("div", { class: "row-actions" }, actions) : h("span", { class: "muted" }, "—")),
    );
  }

  async function lifecycle(project, action) {
    toast(`${action === "start" ? "Starting" : "Stopping"} ${project.name}…`);
    try {
      const result = await api("POST", projectPath(project.project_id, `/${action}`));
      toast(`${project.name}: ${result.message}`);
      changedAt.set(project.project_id, Date.now()); // what was measured before is out of date
    } catch (error) {
      toast(`Could not ${action} ${project.name}: ${error.message}`, "error");
    }
    load();
  }

  async function remove(project) {
    const sure = await confirmAction({
      title: `Delete ${project.name}?`,
      message: "Its VM and its workspace, with every file in it, are destroyed. The history stays in the audit log. This cannot be undone.",
      confirmLabel: "Delete project",
    });
    if (!sure) return;
    try {
      await api("DELETE", projectPath(project.project_id));
      toast(`Deleted ${project.name}.`);
    } catch (error) {
      toast(`Could not delete ${project.name}: ${error.message}`, "error");
    }
    load();
  }

  refreshButton.addEventListener("click", () => {
    details.clear(); // measure again now
    load();
  });
  load();
  timer = setInterval(() => {
    if (document.visibilityState === "visible") load();
  }, REFRESH_MS);

  return {
    dispose() {
      disposed = true;
      clearInterval(timer);
    },
  };
}

function usageNote(usage) {
  return usage?.note ? h("span", { class: "small muted" }, usage.note) : "—";
}

function cell(label, ...content) {
  return h("td", { "data-label": label }, ...content);
}

function actionButton(text, label, onclick, kind = "") {
  return h("button", { type: "button", class: kind, "aria-label": label, onclick }, text);
}

function createForm() {
  const name = h("input", { name: "name", required: true, maxlength: "100", autocomplete: "off" });
  const type = h("select", { name: "project_type" },
    TYPES.map((t) => h("option", { value: t }, t)));
  const description = h("input", { name: "description", autocomplete: "off" });
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Create project");
  const form = h(
    "form",
    { class: "card create-project", "aria-labelledby": "create-title" },
    h("h2", { id: "create-title" }, "New project"),
    h("div", { class: "field-row" },
      field("Name", name), field("Type", type), field("Description (optional)", description)),
    error,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    submit.textContent = "Creating…";
    try {
      const created = await api("POST", "/projects", {
        json: { name: name.value.trim(), project_type: type.value, description: description.value.trim() },
      });
      toast(`Created ${created.name}; ${session.agentId} is its admin.`);
      go(`/ui/projects/${encodeURIComponent(created.project_id)}`);
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
      submit.textContent = "Create project";
    }
  });
  return form;
}
