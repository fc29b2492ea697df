// One WebSocket per open project (subprotocol projectvm.v1, the session cookie as credential).
//
// It reconnects by itself and resumes every stream where it stopped: the event feed from the
// last event id seen, each followed execution from its last output cursor, so nothing is lost
// or shown twice. Terminals cannot resume; their panels are told the connection dropped.

const PROTOCOL = "projectvm.v1";
const CLOSE_REMOVED = 4403;
const MAX_BACKOFF_MS = 10000;

export class ProjectSocket {
  constructor(projectId) {
    this.projectId = projectId;
    this.listeners = new Map(); // stream -> Set of handlers
    this.pending = new Map(); // message id -> {resolve, reject}
    this.nextId = 1;
    this.lastEventId = 0;
    this.wantsEvents = false;
    this.following = new Map(); // execution id -> next output cursor
    this.streams = [];
    this.state = "connecting";
    this.stopped = false;
    this.attempt = 0;
    this.ws = null;
    this.openWaiters = [];
  }

  /** handler(message) for every message of a stream ("events", "execution", ...); "state"
   * gets {state, reason} when the connection changes. Returns the way to stop listening. */
  on(stream, handler) {
    if (!this.listeners.has(stream)) this.listeners.set(stream, new Set());
    this.listeners.get(stream).add(handler);
    return () => this.listeners.get(stream)?.delete(handler);
  }

  emit(stream, message) {
    for (const handler of this.listeners.get(stream) ?? []) {
      try {
        handler(message);
      } catch (error) {
        console.error(error); // one panel's mistake must not stop the others
      }
    }
  }

  setState(state, reason = "") {
    this.state = state;
    this.emit("state", { state, reason });
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/api/v1/projects/${encodeURIComponent(this.projectId)}/ws`;
    const ws = new WebSocket(url, [PROTOCOL]);
    this.ws = ws;
    ws.addEventListener("message", (event) => this.receive(JSON.parse(event.data)));
    ws.addEventListener("close", (event) => this.closed(ws, event));
  }

  receive(message) {
    const { stream, type } = message;
    if (stream === "session" && type === "hello") {
      this.streams = message.streams ?? [];
      this.attempt = 0;
      this.setState("open");
      this.resume();
      for (const waiter of this.openWaiters.splice(0)) waiter.resolve();
    }
    if ((type === "ack" || type === "error") && this.pending.has(message.id)) {
      const waiter = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (type === "ack") waiter.resolve(message.result ?? null);
      else waiter.reject(problemError(message.problem));
      return;
    }
    if (stream === "session" && type === "error" && message.fatal) {
      this.stopped = true;
      this.setState("removed", message.problem?.detail ?? "no access to this project any more");
      return;
    }
    if (stream === "events" && type === "event") {
      if (message.event.event_id <= this.lastEventId) return; // already shown
      this.lastEventId = message.event.event_id;
    }
    if (stream === "execution" && this.following.has(message.execution_id)) {
      if (type === "output" || type === "exit") {
        this.following.set(message.execution_id, message.next_since);
      }
      if (type === "exit") this.following.delete(message.execution_id);
    }
    this.emit(stream, message);
  }

  closed(ws, event) {
    if (ws !== this.ws) return;
    for (const waiter of this.pending.values()) {
      waiter.reject(new Error("the connection to the server dropped; try again"));
    }
    this.pending.clear();
    if (this.stopped) return;
    if (event.code === CLOSE_REMOVED) {
      this.stopped = true;
      this.setState("removed", event.reason || "no access to this project any more");
      return;
    }
    this.attempt += 1;
    const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** Math.min(this.attempt, 6));
    this.setState("reconnecting", `reconnecting in ${Math.round(delay / 1000)} s`);
    setTimeout(() => {
      if (!this.stopped) this.connect();
    }, delay);
  }

  /** After (re)connecting: pick every stream up where it stopped. */
  resume() {
    if (this.wantsEvents) {
      this.send({ stream: "events", type: "subscribe", since_id: this.lastEventId }).catch(() => {});
    }
    for (const [executionId, since] of this.following) {
      this.send({ stream: "execution", type: "subscribe", execution_id: executionId, since })
        .catch(() => {});
    }
  }

  opened() {
    if (this.state === "open") return Promise.resolve();
    return new Promise((resolve, reject) => this.openWaiters.push({ resolve, reject }));
  }

  /** Send a message; resolves with the ack's result, rejects with the server's problem. */
  async send(message) {
    await this.opened();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...message, id }));
    });
  }

  /** Send without waiting for the connection or an answer (terminal keystrokes). */
  post(message) {
    if (this.state === "open") this.ws.send(JSON.stringify(message));
  }

  followEvents() {
    if (this.wantsEvents) return;
    this.wantsEvents = true;
    if (this.state === "open") this.resume();
  }

  /** Follow an execution's output from its start (or from `since`), then live. */
  follow(executionId, since = 0) {
    this.following.set(executionId, since);
    return this.send({ stream: "execution", type: "subscribe", execution_id: executionId, since });
  }

  unfollow(executionId) {
    if (!this.following.delete(executionId)) return;
    this.send({ stream: "execution", type: "unsubscribe", execution_id: executionId }).catch(() => {});
  }

  close() {
    this.stopped = true;
    for (const waiter of this.openWaiters.splice(0)) waiter.reject(new Error("closed"));
    this.ws?.close(1000, "left the page");
  }
}

function problemError(problem = {}) {
  const error = new Error(problem.detail || problem.title || "the server refused");
  error.problem = problem;
  return error;
}
