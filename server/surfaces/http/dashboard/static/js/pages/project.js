// One project: its header (status, actions) and its sections, all fed by one WebSocket.

import { api, onlyRefusals, projectPath, session } from "../api.js";
import { confirmAction } from "../dialog.js";
import { badge, debounce, go, h, toast } from "../dom.js";
import { activityPanel } from "../panels/activity.js";
import { commandsPanel } from "../panels/commands.js";
import { filesPanel } from "../panels/files.js";
import { membersPanel } from "../panels/members.js";
import { queuePanel } from "../panels/queue.js";
import { settingsPanel } from "../panels/settings.js";
import { terminalPanel } from "../panels/terminal.js";
import { ProjectSocket } from "../socket.js";

const SECTIONS = [
  ["files", "Files"],
  ["commands", "Commands"],
  ["activity", "Activity"],
  ["queue", "Queue"],
  ["terminal", "Terminal"],
  ["members", "Members"],
  ["settings", "Settings"],
];
const RANK = { read_only: 0, read_write: 1, admin: 2 };
// Events after which the project's own record (status, members, settings) is read again.
const PROJECT_EVENTS = /^(vm\.|member\.|settings\.|project\.|budget\.)/;

// Where the feed starts: after the event that leaves at most FEED_START events to replay (a
// busy project's whole history would take long to replay; event ids are shared by all
// projects, so this is a search over ids, some 20 small reads for a million events).
const FEED_START = 300;

async function recentEventsStart(projectId) {
  const after = (since) => api("GET", projectPath(projectId, `/events?since_id=${since}&limit=${FEED_START}`));
  try {
    const first = await after(0);
    if (!first.has_more) return 0;
    let low = 0; // more than FEED_START events come after low, at most that many after high
    let high = first.last_event_id;
    while ((await after(high)).has_more) {
      low = high;
      high *= 2;
    }
    while (high - low > 1) {
      const middle = Math.floor((low + high) / 2);
      if ((await after(middle)).has_more) low = middle;
      else high = middle;
    }
    return high;
  } catch (error) {
    onlyRefusals(error);
    return 0; // replay everything rather than show nothing
  }
}

export function projectPage(main, projectId, initialSection) {
  const socket = new ProjectSocket(projectId);
  let project = null;
  const context = {
    projectId,
    socket,
    agentId: session.agentId,
    project: () => project,
    level: () => RANK[project?.your_access] ?? -1,
    canWrite: () => context.level() >= RANK.read_write,
    isAdmin: () => context.level() >= RANK.admin,
    reload: () => reloadProject(),
  };

  const title = h("h1", { tabindex: "-1" }, "Project");
  const status = h("span", { class: "project-status" });
  const meta = h("p", { class: "muted project-meta" });
  const actions = h("div", { class: "row-actions" });
  const connection = h("span", { class: "connection", role: "status" }, "connecting…");
  const banner = h("div", { class: "notice error", role: "alert", hidden: true });
  const tabs = h("nav", { class: "tabs", "aria-label": "Project sections" });
  const panelArea = h("div", { class: "panel-area" });
  main.replaceChildren(h("div", { class: "page project-page" },
    h("p", { class: "crumbs" }, h("a", { href: "/ui/projects", "data-route": true }, "Projects"), " / "),
    h("div", { class: "page-head" }, h("div", {}, title, status), h("div", { class: "head-actions" }, connection, actions)),
    meta, banner, tabs, panelArea));

  const factories = {
    files: () => filesPanel(context),
    commands: () => commandsPanel(context),
    activity: () => activityPanel(context),
    queue: () => queuePanel(context, { showOutput: (id, details) => showOutputIn("commands", id, details) }),
    terminal: () => terminalPanel(context),
    members: () => membersPanel(context),
    settings: () => settingsPanel(context),
  };
  const panels = new Map(); // made when first shown, kept while the page is open
  let section = null;

  function panel(name) {
    if (!panels.has(name)) {
      const made = factories[name]();
      made.element.classList.add("panel");
      made.element.setAttribute("role", "region");
      made.element.setAttribute("aria-label", SECTIONS.find(([key]) => key === name)[1]);
      made.element.hidden = true;
      panelArea.append(made.element);
      panels.set(name, made);
    }
    return panels.get(name);
  }

  function showOutputIn(name, executionId, details) {
    go(`/ui/projects/${encodeURIComponent(projectId)}/${name}`);
    panel(name).showOutput(executionId, details);
  }

  function drawTabs() {
    tabs.replaceChildren(h("ul", {}, SECTIONS
      .filter(([key]) => key !== "settings" || context.isAdmin())
      .map(([key, label]) => h("li", {}, h("a", {
        href: `/ui/projects/${encodeURIComponent(projectId)}/${key}`,
        "data-route": true,
        "aria-current": key === section ? "page" : "false",
      }, label)))));
  }

  function show(name) {
    if (!project) {
      initialSection = name; // shown once the project is read
      return;
    }
    const wanted = SECTIONS.some(([key]) => key === name) ? name : "files";
    section = wanted;
    for (const [key, made] of panels) made.element.hidden = key !== wanted;
    const made = panel(wanted);
    made.element.hidden = false;
    made.onShow?.();
    drawTabs();
    document.title = `${project?.name ?? projectId} · ${SECTIONS.find(([key]) => key === wanted)[1]} · ProjectVM`;
  }

  function drawHeader() {
    title.textContent = project.name;
    status.replaceChildren(badge(project.status), project.status_reason ? h("span", { class: "muted small" }, ` ${project.status_reason}`) : "");
    meta.textContent = `${project.project_type} · driver ${project.driver} · owner ${project.owner_id} · your access: ${String(project.your_access).replace("_", "-")}${project.description ? ` · ${project.description}` : ""}`;
    const buttons = [];
    if (context.isAdmin()) {
      if (project.status === "running") buttons.push(h("button", { type: "button", onclick: () => lifecycle("stop") }, "Stop"));
      else buttons.push(h("button", { type: "button", onclick: () => lifecycle("start") }, "Start"));
      buttons.push(h("button", { type: "button", class: "danger", onclick: remove }, "Delete"));
    }
    actions.replaceChildren(...buttons);
    drawTabs();
  }

  async function reloadProject() {
    try {
      project = await api("GET", projectPath(projectId));
      drawHeader();
      for (const made of panels.values()) made.onProject?.();
    } catch (error) {
      if (error.status === 404) {
        banner.textContent = error.message;
        banner.hidden = false;
      } else if (error.status !== 401) {
        toast(`Could not read the project: ${error.message}`, "error");
      }
    }
  }

  async function lifecycle(action) {
    toast(`${action === "start" ? "Starting" : "Stopping"} ${project.name}…`);
    try {
      await api("POST", projectPath(projectId, `/${action}`));
    } catch (error) {
      toast(`Could not ${action} it: ${error.message}`, "error");
    }
    reloadProject();
  }

  async function remove() {
    const sure = await confirmAction({
      title: `Delete ${project.name}?`,
      message: "Its VM and its workspace, with every file in it, are destroyed. This cannot be undone.",
      confirmLabel: "Delete project",
    });
    if (!sure) return;
    try {
      await api("DELETE", projectPath(projectId));
      toast(`Deleted ${project.name}.`);
      go("/ui/projects");
    } catch (error) {
      toast(`Could not delete it: ${error.message}`, "error");
    }
  }

  const refresh = debounce(reloadProject, 300);
  socket.on("events", (message) => {
    const event = message.event;
    for (const made of panels.values()) made.onEvent?.(event);
    if (PROJECT_EVENTS.test(event.kind)) refresh();
  });
  socket.on("state", ({ state, reason }) => {
    connection.dataset.state = state;
    connection.textContent = { open: "live", reconnecting: `offline, ${reason}`, removed: "disconnected" }[state] ?? state;
    if (state === "removed") {
      banner.replaceChildren(`You no longer have access to this project: ${reason}. `,
        h("a", { href: "/ui/projects", "data-route": true }, "Back to the projects"));
      banner.hidden = false;
    }
  });

  (async () => {
    await reloadProject();
    if (!project) return;
    panel("activity"); // collects the feed from the start, whichever section is shown
    show(initialSection);
    socket.lastEventId = await recentEventsStart(projectId);
    socket.followEvents();
    socket.connect();
  })();

  return {
    show,
    dispose() {
      for (const made of panels.values()) made.dispose();
      socket.close();
      document.title = "ProjectVM";
    },
  };
}
