// The dashboard's only ways to the server: the REST API under /api/v1 (as the signed-in agent,
// with the session cookie) and /ui/session to sign in and out. Changes carry the session's
// CSRF token; nothing secret is kept anywhere but in this module's memory.

export const session = { agentId: null, csrf: null };

let signedOutHandler = () => {};

/** Called when the server no longer knows the session (expired, signed out elsewhere). */
export function whenSignedOut(handler) {
  signedOutHandler = handler;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.message || `the server answered ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

const SAFE = new Set(["GET", "HEAD"]);

/** fetch() as the signed-in person; answers the Response as it is. */
export async function request(method, url, { json, body, headers = {} } = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin", cache: "no-store" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  if (!SAFE.has(method) && session.csrf) init.headers["X-CSRF-Token"] = session.csrf;
  const response = await fetch(url, init);
  if (response.status === 401 && url.startsWith("/api/")) {
    session.agentId = null;
    session.csrf = null;
    signedOutHandler();
  }
  return response;
}

export async function problemOf(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    problem = { detail: `the server answered ${response.status} ${response.statusText}` };
  }
  return new ApiError(response.status, problem);
}

/** A JSON call to /api/v1; throws ApiError with the server's explanation. */
export async function api(method, path, options = {}) {
  const response = await request(method, `/api/v1${path}`, options);
  if (!response.ok) throw await problemOf(response);
  return response.status === 204 ? null : response.json();
}

export function projectPath(projectId, rest = "") {
  return `/projects/${encodeURIComponent(projectId)}${rest}`;
}

/** A workspace path as URL segments (each encoded, the slashes kept). */
export function fileUrl(projectId, path) {
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  return `/api/v1${projectPath(projectId, `/files/${encoded}`)}`;
}

function remember(answer) {
  session.agentId = answer.signed_in ? answer.agent_id : null;
  session.csrf = answer.signed_in ? answer.csrf_token : null;
  return answer;
}

export async function loadSession() {
  const response = await fetch("/ui/session", { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw await problemOf(response);
  return remember(await response.json());
}

export async function signIn(token) {
  const response = await fetch("/ui/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!response.ok) throw await problemOf(response);
  return remember(await response.json());
}

export async function signOut() {
  const headers = session.csrf ? { "X-CSRF-Token": session.csrf } : {};
  await fetch("/ui/session", { method: "DELETE", credentials: "same-origin", headers });
  remember({ signed_in: false });
}

/** In a catch that expects the server to refuse sometimes: a refusal is fine, anything else
 * is a mistake in the page and is reported (the browser tests fail on it). */
export function onlyRefusals(error) {
  if (!(error instanceof ApiError)) console.error(error);
}
