// Members and their access levels; admins add, change and remove them.

import { api, projectPath, session } from "../api.js";
import { confirmAction } from "../dialog.js";
import { debounce, field, fill, go, h, toast } from "../dom.js";
import { when } from "../format.js";

const LEVELS = [
  ["read_only", "read-only: read files and history"],
  ["read_write", "read-write: also write files and run commands"],
  ["admin", "admin: also members, settings, start, stop, delete"],
];

function levelSelect(value, label) {
  return h("select", { "aria-label": label },
    LEVELS.map(([level, text]) => h("option", { value: level, selected: level === value }, text)));
}

export function membersPanel(context) {
  const { projectId } = context;
  const rows = h("tbody");
  const table = h("table", { class: "members responsive" },
    h("caption", { class: "visually-hidden" }, "Members"),
    h("thead", {}, h("tr", {}, ["Agent", "Access", "Added", ""].map((t) => h("th", { scope: "col" }, t)))),
    rows);
  const agent = h("input", { name: "agent_id", autocomplete: "off", spellcheck: "false", required: true, pattern: "[a-z0-9][a-z0-9._-]{0,63}" });
  const level = levelSelect("read_write", "Access level");
  level.removeAttribute("aria-label");
  const addForm = h("form", { class: "card inline-form", "aria-labelledby": "add-member-title" },
    h("h3", { id: "add-member-title" }, "Add a member"),
    field("Agent name", agent), field("Access", level),
    h("button", { type: "submit", class: "primary" }, "Add member"));
  const element = h("div", { class: "panel-members" },
    h("h2", {}, "Members"),
    h("div", { class: "table-wrap" }, table),
    addForm);
  let owner = null;

  function row(member) {
    const admin = context.isAdmin();
    const me = member.agent_id === session.agentId;
    const isOwner = member.agent_id === owner;
    const label = h("span", {}, member.agent_id, isOwner ? h("span", { class: "badge" }, "owner") : null, me ? h("span", { class: "muted small" }, " (you)") : null);
    let access = member.access_level.replace("_", "-");
    if (admin && !isOwner) {
      access = levelSelect(member.access_level, `Access level of ${member.agent_id}`);
      access.addEventListener("change", () => assign(member.agent_id, access.value));
    }
    const actions = [];
    if ((admin || me) && !isOwner) {
      actions.push(h("button", {
        type: "button",
        class: "danger small",
        "aria-label": me ? "Leave this project" : `Remove ${member.agent_id}`,
        onclick: () => remove(member.agent_id, me),
      }, me ? "Leave" : "Remove"));
    }
    return h("tr", { dataset: { member: member.agent_id } },
      h("td", { "data-label": "Agent" }, label),
      h("td", { "data-label": "Access" }, access),
      h("td", { "data-label": "Added" }, `${when(member.added_at)}${member.added_by ? ` by ${member.added_by}` : ""}`),
      h("td", {}, actions));
  }

  async function load() {
    try {
      const list = await api("GET", projectPath(projectId, "/members"));
      owner = list.owner_id;
      fill(rows, list.members.map(row));
    } catch (error) {
      toast(`Could not list the members: ${error.message}`, "error");
    }
  }

  async function assign(agentId, accessLevel) {
    try {
      await api("PUT", projectPath(projectId, `/members/${encodeURIComponent(agentId)}`), { json: { access_level: accessLevel } });
      toast(`${agentId} now has ${accessLevel.replace("_", "-")} access.`);
    } catch (error) {
      toast(`Could not change ${agentId}'s access: ${error.message}`, "error");
    }
    load();
  }

  async function remove(agentId, me) {
    const sure = await confirmAction({
      title: me ? "Leave this project?" : `Remove ${agentId}?`,
      message: me
        ? "You lose access to it until an admin adds you again."
        : `${agentId} loses access to this project at once, also on connections open now.`,
      confirmLabel: me ? "Leave project" : `Remove ${agentId}`,
    });
    if (!sure) return;
    try {
      await api("DELETE", projectPath(projectId, `/members/${encodeURIComponent(agentId)}`));
      toast(me ? "You left the project." : `Removed ${agentId}.`);
      if (me) go("/ui/projects");
    } catch (error) {
      toast(`Could not remove ${agentId}: ${error.message}`, "error");
    }
    load();
  }

  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    await assign(agent.value.trim(), level.value);
    agent.value = "";
  });

  function applyAccess() {
    addForm.hidden = !context.isAdmin();
    load();
  }

  const refresh = debounce(load, 200);
  applyAccess();
  return {
    element,
    onEvent(event) {
      if (event.kind.startsWith("member.")) refresh();
    },
    onProject: applyAccess,
    dispose() {},
  };
}
