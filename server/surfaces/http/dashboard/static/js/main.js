// The dashboard's entry: who is signed in, and which page a path shows.
//
//   /ui/projects                      the projects
//   /ui/projects/{id}[/{section}]     one project: files, commands, activity, queue,
//                                     terminal, members, settings

import { loadSession, session, signOut, whenSignedOut } from "./api.js";
import { h, toast } from "./dom.js";
import { projectPage } from "./pages/project.js";
import { projectsPage } from "./pages/projects.js";
import { signInPage } from "./pages/signin.js";

const main = document.getElementById("main");
let current = null; // the page shown: {dispose(), key, show?(section)}

function showChrome(signedIn) {
  document.getElementById("top-nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  document.getElementById("who-name").textContent = session.agentId ?? "";
}

function leave() {
  current?.dispose();
  current = null;
}

function parse(pathname) {
  const project = pathname.match(/^\/ui\/projects\/([^/]+)(?:\/([a-z]+))?\/?$/);
  if (project) return { page: "project", projectId: decodeURIComponent(project[1]), section: project[2] };
  if (/^\/(ui\/?(projects\/?)?)?$/.test(pathname)) return { page: "projects" };
  return { page: "missing" };
}

async function render({ focus = true } = {}) {
  if (!session.agentId) {
    if (current?.key === "sign-in") return;
    leave();
    showChrome(false);
    current = signInPage(main, () => {
      if (!/^\/ui\/projects/.test(location.pathname)) history.replaceState({}, "", "/ui/projects");
      render();
    });
    current.key = "sign-in";
    current.focus();
    return;
  }
  showChrome(true);
  const route = parse(location.pathname);
  const key = route.page === "project" ? `project:${route.projectId}` : route.page;
  if (current?.key === key && current.show) {
    current.show(route.section); // the same project: only the section changes
  } else {
    leave();
    if (route.page === "projects") current = projectsPage(main);
    else if (route.page === "project") current = projectPage(main, route.projectId, route.section);
    else {
      main.replaceChildren(
        h("h1", { tabindex: "-1" }, "Nothing here"),
        h("p", {}, h("a", { href: "/ui/projects", "data-route": true }, "Go to the projects")),
      );
      current = { dispose() {} };
    }
    current.key = key;
  }
  if (focus) (main.querySelector("h1") ?? main).focus({ preventScroll: false });
}

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState({}, "", path);
  else history.pushState({}, "", path);
  render();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest?.("a[data-route]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", () => render());
window.addEventListener("pvm:navigate", (event) => navigate(event.detail.path, event.detail));

document.getElementById("sign-out").addEventListener("click", async () => {
  await signOut();
  leave();
  history.replaceState({}, "", "/ui/projects");
  render();
  toast("Signed out.");
});

whenSignedOut(() => {
  toast("Your session ended; sign in again.", "error");
  render();
});

try {
  await loadSession();
} catch (error) {
  toast(`Could not reach the server: ${error.message}`, "error");
}
render({ focus: false });
