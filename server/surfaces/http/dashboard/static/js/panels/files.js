// The workspace: a file tree and an editor that saves with If-Match, so a save never silently
// overwrites someone else's change: a conflict shows both versions, who made theirs, and lets
// the person keep theirs or take the other.

import { api, fileUrl, onlyRefusals, problemOf, projectPath, request, session } from "../api.js";
import { confirmAction } from "../dialog.js";
import { lineDiff } from "../diff.js";
import { debounce, field, h, toast, uid } from "../dom.js";
import { bytes, shortSha, when } from "../format.js";

const LARGEST_EDITABLE = 2 * 1024 * 1024;
const TREE_ENTRIES = 5000;

function unquote(etag) {
  return etag ? etag.replace(/^W\//, "").replace(/^"|"$/g, "") : null;
}

async function fetchText(projectId, path) {
  const response = await request("GET", fileUrl(projectId, path));
  if (!response.ok) throw await problemOf(response);
  const sha = unquote(response.headers.get("ETag"));
  const buffer = await response.arrayBuffer();
  if (buffer.byteLength > LARGEST_EDITABLE) return { sha, size: buffer.byteLength, text: null, reason: "too large to edit here" };
  try {
    return { sha, size: buffer.byteLength, text: new TextDecoder("utf-8", { fatal: true }).decode(buffer) };
  } catch {
    return { sha, size: buffer.byteLength, text: null, reason: "not UTF-8 text" };
  }
}

export function filesPanel(context) {
  const { projectId } = context;
  // -- the tree ---------------------------------------------------------------------------
  const tree = h("div", { class: "tree" });
  const hidden = h("input", { type: "checkbox" });
  const newPath = h("input", { autocomplete: "off", spellcheck: "false", required: true, placeholder: "src/new_file.py" });
  const newForm = h("form", { class: "new-file", hidden: true },
    field("New file path", newPath),
    h("div", { class: "row-actions" },
      h("button", { type: "submit", class: "primary small" }, "Create"),
      h("button", { type: "button", class: "quiet small", onclick: () => { newForm.hidden = true; newButton.focus(); } }, "Cancel")));
  const newButton = h("button", { type: "button", class: "small" }, "New file");
  const refreshButton = h("button", { type: "button", class: "quiet small" }, "Refresh");
  const treeSide = h("nav", { class: "tree-side card", "aria-label": "Files in the workspace" },
    h("div", { class: "tree-tools" }, newButton, refreshButton,
      h("label", { class: "check" }, hidden, " hidden files")),
    newForm,
    tree);
  const expanded = new Set();

  // -- the editor ---------------------------------------------------------------------------
  const titleId = uid("editor-title");
  const title = h("h2", { id: titleId, tabindex: "-1" }, "No file open");
  const editor = h("textarea", {
    class: "editor",
    spellcheck: "false",
    autocomplete: "off",
    wrap: "off",
    disabled: true,
    "aria-labelledby": titleId,
  });
  const saveButton = h("button", { type: "button", class: "primary", disabled: true }, "Save");
  const deleteButton = h("button", { type: "button", class: "danger", hidden: true }, "Delete file");
  const download = h("a", { class: "button quiet", hidden: true, download: "" }, "Download");
  const state = h("span", { class: "editor-state", "aria-live": "polite" });
  const notice = h("div", { class: "notice", role: "status", hidden: true });
  const conflictArea = h("div", { class: "conflict-area" });
  const editorSide = h("section", { class: "editor-side card", "aria-labelledby": titleId },
    h("div", { class: "editor-head" }, title, h("div", { class: "row-actions" }, state, download, deleteButton, saveButton)),
    notice,
    conflictArea,
    editor);
  const element = h("div", { class: "panel-files" }, treeSide, editorSide);

  // What is open: path, the sha256 it was read at (null: a new file), the text as read.
  let open = null;
  let saving = false;

  const dirty = () => open !== null && editor.value !== open.original;

  function showState() {
    if (!open) {
      state.textContent = "";
      return;
    }
    if (!context.canWrite()) state.textContent = "read-only";
    else state.textContent = dirty() ? "unsaved changes" : open.sha ? `saved · ${shortSha(open.sha)}` : "new file";
  }

  // -- tree ---------------------------------------------------------------------------------

  function buildTree(entries) {
    const root = { dirs: new Map(), files: [] };
    for (const entry of entries) {
      const parts = entry.path.split("/");
      let node = root;
      for (const [index, part] of parts.entries()) {
        const last = index === parts.length - 1;
        if (last && entry.type !== "directory") {
          node.files.push({ name: part, entry });
        } else {
          if (!node.dirs.has(part)) node.dirs.set(part, { dirs: new Map(), files: [], path: parts.slice(0, index + 1).join("/") });
          node = node.dirs.get(part);
        }
      }
    }
    return root;
  }

  function renderNode(node) {
    const items = [];
    for (const [name, child] of [...node.dirs].sort(([a], [b]) => a.localeCompare(b))) {
      const details = h("details", { open: expanded.has(child.path) },
        h("summary", {}, h("span", { class: "dir-name" }, `${name}/`)),
        renderNode(child));
      details.addEventListener("toggle", () => {
        if (details.open) expanded.add(child.path);
        else expanded.delete(child.path);
      });
      items.push(h("li", {}, details));
    }
    for (const { name, entry } of node.files.sort((a, b) => a.name.localeCompare(b.name))) {
      items.push(h("li", {}, h("button", {
        type: "button",
        class: "file",
        dataset: { path: entry.path },
        "aria-current": open?.path === entry.path ? "true" : "false",
        title: `${entry.path} · ${bytes(entry.size)} · ${when(entry.modified_at)}`,
        onclick: () => openFile(entry.path),
      }, name)));
    }
    return h("ul", {}, items);
  }

  async function loadTree() {
    const query = new URLSearchParams({ path: ".", recursive: "true", max_entries: String(TREE_ENTRIES), include_hidden: String(hidden.checked) });
    try {
      const listing = await api("GET", projectPath(projectId, `/tree?${query}`));
      const list = renderNode(buildTree(listing.entries));
      tree.replaceChildren(listing.entries.length ? list : h("p", { class: "muted" }, "The workspace is empty."));
      if (listing.truncated) tree.append(h("p", { class: "muted small" }, `Showing the first ${TREE_ENTRIES} entries.`));
    } catch (error) {
      tree.replaceChildren(h("p", { class: "error" }, `Cannot list the files: ${error.message}`));
    }
  }

  // -- editor -------------------------------------------------------------------------------

  function show(path, { sha, text, reason = null, size = 0 }) {
    open = { path, sha, original: text ?? "" };
    // The open file's folders stay unfolded in the tree.
    const parts = path.split("/");
    for (let depth = 1; depth < parts.length; depth += 1) expanded.add(parts.slice(0, depth).join("/"));
    title.textContent = path;
    conflictArea.replaceChildren();
    notice.hidden = true;
    download.hidden = !sha;
    download.href = sha ? fileUrl(projectId, path) : "";
    download.setAttribute("aria-label", `Download ${path}`);
    deleteButton.hidden = !sha || !context.canWrite();
    if (text === null) {
      editor.value = "";
      editor.disabled = true;
      editor.placeholder = `${path} is ${reason} (${bytes(size)}); download it instead.`;
      saveButton.disabled = true;
    } else {
      editor.value = text;
      editor.placeholder = "";
      editor.disabled = false;
      editor.readOnly = !context.canWrite();
      saveButton.disabled = !context.canWrite();
    }
    for (const button of tree.querySelectorAll("button.file")) {
      button.setAttribute("aria-current", button.dataset.path === path ? "true" : "false");
    }
    showState();
  }

  async function openFile(path) {
    if (dirty()) {
      const discard = await confirmAction({
        title: "Discard your changes?",
        message: `${open.path} has unsaved changes; opening ${path} drops them.`,
        confirmLabel: "Discard changes",
      });
      if (!discard) return;
    }
    try {
      show(path, await fetchText(projectId, path));
      editor.focus();
    } catch (error) {
      toast(`Cannot open ${path}: ${error.message}`, "error");
    }
  }

  async function save({ ifMatch = open?.sha ?? null } = {}) {
    if (!open || !context.canWrite()) return;
    const text = editor.value;
    const headers = { "Content-Type": "application/octet-stream" };
    if (ifMatch) headers["If-Match"] = `"${ifMatch}"`;
    else headers["If-None-Match"] = "*"; // a new file (or one deleted meanwhile): create only
    saving = true;
    saveButton.disabled = true;
    state.textContent = "saving…";
    try {
      const response = await request("PUT", fileUrl(projectId, open.path), { body: new TextEncoder().encode(text), headers });
      if (response.status === 412) {
        await conflict((await problemOf(response)).problem, text);
        return;
      }
      if (!response.ok) throw await problemOf(response);
      const result = await response.json();
      open = { path: open.path, sha: result.sha256, original: text };
      conflictArea.replaceChildren();
      notice.hidden = true;
      download.hidden = false;
      download.href = fileUrl(projectId, open.path);
      deleteButton.hidden = false;
      toast(`Saved ${open.path}.`);
      if (result.created) loadTree();
    } catch (error) {
      toast(`Could not save ${open.path}: ${error.message}`, "error");
    } finally {
      saving = false;
      saveButton.disabled = !context.canWrite();
      showState();
    }
  }

  async function conflict(problem, mine) {
    const path = open.path;
    const theirSha = problem.current_sha256 ?? null;
    const who = problem.changed_by ?? "someone else";
    let theirs = "";
    if (theirSha) {
      try {
        const read = await fetchText(projectId, path);
        theirs = read.text ?? `(${read.reason}, ${bytes(read.size)})`;
      } catch (error) {
        theirs = `(cannot read it: ${error.message})`;
      }
    }
    const headingId = uid("conflict");
    const diff = lineDiff(theirs, mine);
    const diffView = diff
      ? h("pre", { class: "diff", tabindex: "0", "aria-label": "Differences: - theirs, + yours" },
          diff.map(({ op, line }) => h("span", { class: op === "+" ? "add" : op === "-" ? "del" : "same" }, `${op} ${line}\n`)))
      : h("p", { class: "muted" }, "The files are too large to compare here.");
    const keepMine = h("button", { type: "button", class: "primary" }, "Keep mine");
    const takeTheirs = h("button", { type: "button" }, theirSha ? "Take theirs" : "Accept the deletion");
    const box = h("section", { class: "conflict", role: "alert", "aria-labelledby": headingId },
      h("h3", { id: headingId, tabindex: "-1" }, `Conflict: ${path} changed since you opened it`),
      h("p", {},
        theirSha
          ? [h("strong", {}, who), ` saved another version (${shortSha(theirSha)}). Your changes are not saved yet: keep yours (replacing theirs) or take theirs (dropping yours).`]
          : [h("strong", {}, who), " deleted it. Keep yours to create it again, or accept the deletion."]),
      h("div", { class: "versions" },
        h("div", {}, h("h4", {}, `Theirs (${who})`), h("pre", { class: "version theirs", tabindex: "0" }, theirSha ? theirs : "(deleted)")),
        h("div", {}, h("h4", {}, "Yours"), h("pre", { class: "version mine", tabindex: "0" }, mine))),
      h("details", {}, h("summary", {}, "Line by line"), diffView),
      h("div", { class: "actions" }, takeTheirs, keepMine));
    keepMine.addEventListener("click", () => {
      editor.value = mine;
      save({ ifMatch: theirSha });
    });
    takeTheirs.addEventListener("click", () => {
      if (theirSha) {
        show(path, { sha: theirSha, text: theirs });
        toast(`Took ${who}'s version of ${path}.`);
      } else {
        close();
        toast(`${path} stays deleted.`);
        loadTree();
      }
      editor.focus();
    });
    notice.hidden = true; // the conflict says it all
    conflictArea.replaceChildren(box);
    box.querySelector("h3").focus();
  }

  function close() {
    open = null;
    title.textContent = "No file open";
    editor.value = "";
    editor.disabled = true;
    saveButton.disabled = true;
    deleteButton.hidden = true;
    download.hidden = true;
    conflictArea.replaceChildren();
    notice.hidden = true;
    showState();
  }

  async function deleteFile() {
    const path = open.path;
    const sure = await confirmAction({
      title: `Delete ${path}?`,
      message: "It is removed from the workspace for every member.",
      confirmLabel: "Delete file",
    });
    if (!sure) return;
    const response = await request("DELETE", fileUrl(projectId, path), { headers: { "If-Match": `"${open.sha}"` } });
    if (response.ok) {
      toast(`Deleted ${path}.`);
      close();
      loadTree();
    } else {
      toast(`Could not delete ${path}: ${(await problemOf(response)).message}`, "error");
    }
  }

  // Someone else changed the open file: reload it if nothing would be lost, else say so.
  async function changedElsewhere(event) {
    const path = event.data.path;
    if (!open || path !== open.path) return;
    if (event.agent_id === session.agentId && saving) return;
    if (event.kind !== "file.deleted" && event.data.sha256 === open.sha) return;
    const who = event.agent_id ?? "someone";
    if (event.kind === "file.deleted") {
      notice.replaceChildren(`${who} deleted ${path} at ${when(event.created_at)}. Saving creates it again.`);
      notice.hidden = false;
      return;
    }
    if (!dirty()) {
      try {
        show(path, await fetchText(projectId, path));
        notice.replaceChildren(`${who} changed ${path} at ${when(event.created_at)}; showing their version.`);
        notice.hidden = false;
      } catch (error) {
        onlyRefusals(error); // it changed again or went away; the next event says
      }
      return;
    }
    notice.replaceChildren(`${who} changed ${path} at ${when(event.created_at)} while you were editing. Saving will show both versions.`);
    notice.hidden = false;
  }

  newButton.addEventListener("click", () => {
    newForm.hidden = false;
    newPath.focus();
  });
  newForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const path = newPath.value.trim().replace(/^\/+/, "");
    if (!path) return;
    if (dirty() && !(await confirmAction({ title: "Discard your changes?", message: `${open.path} has unsaved changes.`, confirmLabel: "Discard changes" }))) return;
    newForm.hidden = true;
    newPath.value = "";
    show(path, { sha: null, text: "" });
    editor.focus();
  });
  refreshButton.addEventListener("click", loadTree);
  hidden.addEventListener("change", loadTree);
  saveButton.addEventListener("click", () => save());
  deleteButton.addEventListener("click", deleteFile);
  editor.addEventListener("input", showState);
  editor.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      save();
    }
  });

  const refreshTree = debounce(loadTree, 300);
  function applyAccess() {
    newButton.hidden = !context.canWrite();
    if (open) {
      editor.readOnly = !context.canWrite();
      saveButton.disabled = !context.canWrite() || editor.disabled;
    }
    showState();
  }
  loadTree();
  applyAccess();

  return {
    element,
    onEvent(event) {
      if (!event.kind.startsWith("file.")) return;
      refreshTree();
      changedElsewhere(event);
    },
    onProject: applyAccess,
    dispose() {},
  };
}
