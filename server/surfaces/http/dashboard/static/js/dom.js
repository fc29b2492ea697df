// Building the page from data without ever parsing data as HTML.

const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "selected", "readOnly", "open"]);

/** h("button", {type: "button", onclick: fn, class: "x"}, "text", child, [more]) */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (PROPERTIES.has(key)) element[key] = value;
    else if (value === false) continue;
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace an element's children. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

let uniqueCounter = 0;
/** An id for tying a label to its control. */
export function uid(prefix = "f") {
  uniqueCounter += 1;
  return `${prefix}-${uniqueCounter}`;
}

/** A labelled form control: h("label") + the control, tied by id. */
export function field(labelText, control, hint) {
  control.id ||= uid();
  const hintNode = hint ? h("span", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintNode) control.setAttribute("aria-describedby", hintNode.id);
  return h("div", { class: "field" }, h("label", { for: control.id }, labelText), control, hintNode);
}

/** Show a short message to everyone (screen readers too) for a few seconds. */
export function toast(message, kind = "info") {
  const area = document.getElementById("toasts");
  if (!area) return;
  const note = h("p", { class: `toast ${kind}` }, message);
  area.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 9000 : 4000);
}

/** Run fn at most once per `ms`, after the last call (for bursts of events). */
export function debounce(fn, ms = 250) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Go to a dashboard path (the router in main.js listens). */
export function go(path, { replace = false } = {}) {
  window.dispatchEvent(new CustomEvent("pvm:navigate", { detail: { path, replace } }));
}

/** A status badge: running, stopped, failed, completed, ... */
export function badge(status, label = status) {
  return h("span", { class: `badge status-${status}` }, label);
}
