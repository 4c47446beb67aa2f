// The client's state, with no DOM and no socket: what the page knows about each task, and the
// rules for applying updates. Imported by the page (app.js) and by the node tests (web/test/).
//
// Rules (from the contract): every change of a task bumps its `seq`; an update whose `seq` is not
// above the last one applied is dropped; a terminal status never changes again; the bar never goes
// back. Updates are coalesced: any number of them between two renders leave one dirty entry.

export const STATUSES = Object.freeze([
  "PENDING",
  "RUNNING",
  "RETRYING",
  "COMPLETED",
  "FAILED",
  "TIMED_OUT",
  "CANCELLED",
]);
export const TERMINAL = Object.freeze(new Set(["COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"]));

export function isTerminal(status) {
  return TERMINAL.has(status);
}

/** A task can be cancelled until it ends. */
export function canCancel(status) {
  return STATUSES.includes(status) && !TERMINAL.has(status);
}

export function clampPercent(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return 0;
  return Math.min(100, Math.max(0, n));
}

/** Why a snapshot is unusable, or null when it is fine. */
export function invalidReason(snap) {
  if (snap === null || typeof snap !== "object") return "not an object";
  if (typeof snap.task_id !== "string" || !snap.task_id) return "no task_id";
  if (!Number.isInteger(snap.seq) || snap.seq < 1) return "bad seq";
  if (!STATUSES.includes(snap.status)) return "unknown status";
  return null;
}

/**
 * What the page knows about the user's tasks.
 *
 * `apply(snapshot)` answers one of "applied", "stale" (seq not above the last applied),
 * "final" (the task already ended), "invalid". `takeDirty()` hands out the ids changed since the
 * last call, once each: that is what a render frame redraws.
 */
export class TaskStore {
  constructor({ limit = 200 } = {}) {
    this.limit = limit;
    this.tasks = new Map();
    this.dirty = new Set();
    this.cleared = new Map(); // task id -> seq it had when the user cleared it
    this.counts = { applied: 0, stale: 0, final: 0, invalid: 0 };
  }

  get size() {
    return this.tasks.size;
  }

  get(taskId) {
    return this.tasks.get(taskId);
  }

  apply(snap) {
    const outcome = this._apply(snap);
    this.counts[outcome] += 1;
    return outcome;
  }

  _apply(snap) {
    if (invalidReason(snap) !== null) return "invalid";
    if (snap.seq <= (this.cleared.get(snap.task_id) ?? 0)) return "stale";
    const known = this.tasks.get(snap.task_id);
    if (known !== undefined) {
      if (snap.seq <= known.seq) return "stale";
      if (isTerminal(known.status)) return "final";
    }
    const reported = clampPercent(snap.progress?.percent);
    let percent = Math.max(known?.percent ?? 0, reported);
    if (snap.status === "COMPLETED") percent = 100;
    this.tasks.set(snap.task_id, {
      ...snap,
      progress: {
        percent: reported,
        message: snap.progress?.message ?? null,
        data: snap.progress?.data ?? {},
      },
      percent,
      placeholder: false,
    });
    this.dirty.add(snap.task_id);
    this._prune();
    return "applied";
  }

  /**
   * Record a task we just submitted, from the submit ack, until its first snapshot arrives.
   * It carries seq 0 so that the real snapshot (seq 1 and up) always replaces it.
   */
  addSubmitted(ack, { task, queue = null, now = Date.now() / 1000 } = {}) {
    if (!ack || typeof ack.task_id !== "string" || this.tasks.has(ack.task_id)) return false;
    this.tasks.set(ack.task_id, {
      task_id: ack.task_id,
      task,
      queue,
      status: "PENDING",
      seq: 0,
      progress: { percent: 0, message: null, data: {} },
      result: null,
      error: null,
      created_at: now,
      started_at: null,
      finished_at: null,
      percent: 0,
      placeholder: true,
    });
    this.dirty.add(ack.task_id);
    this._prune();
    return true;
  }

  /** Forget a task (the page's "clear" button): replays of what it had stay out. */
  remove(taskId) {
    const known = this.tasks.get(taskId);
    if (known === undefined) return;
    this.tasks.delete(taskId);
    this.cleared.set(taskId, known.seq);
    this.dirty.add(taskId);
  }

  /** Forget everything (another user signed in on this tab). */
  clear() {
    for (const id of this.tasks.keys()) this.dirty.add(id);
    this.tasks.clear();
    this.cleared.clear();
  }

  takeDirty() {
    const ids = [...this.dirty];
    this.dirty.clear();
    return ids;
  }

  /** Newest first. */
  list() {
    return [...this.tasks.values()].sort(newestFirst);
  }

  /** The Socket.IO `watch` body after a reconnect: every task that may still change. */
  watchMap() {
    const tasks = {};
    for (const t of this.tasks.values()) {
      if (!isTerminal(t.status)) tasks[t.task_id] = t.seq;
    }
    return tasks;
  }

  summary() {
    const out = { active: 0, done: 0, failed: 0 };
    for (const t of this.tasks.values()) {
      if (!isTerminal(t.status)) out.active += 1;
      else if (t.status === "COMPLETED") out.done += 1;
      else out.failed += 1;
    }
    return out;
  }

  // Keep the newest `limit` tasks, dropping the oldest ended ones first.
  _prune() {
    if (this.tasks.size <= this.limit) return;
    const ended = [...this.tasks.values()].filter((t) => isTerminal(t.status)).sort(newestFirst);
    while (this.tasks.size > this.limit && ended.length) {
      const old = ended.pop();
      this.tasks.delete(old.task_id);
      this.dirty.add(old.task_id);
    }
  }
}

function newestFirst(a, b) {
  return (b.created_at ?? 0) - (a.created_at ?? 0) || (a.task_id < b.task_id ? -1 : 1);
}

/** Seconds a task has run (or has waited, while queued). `now` is server time in seconds. */
export function elapsedSeconds(t, now) {
  if (t.started_at != null) return Math.max(0, (t.finished_at ?? now) - t.started_at);
  if (isTerminal(t.status)) return null;
  return Math.max(0, now - (t.created_at ?? now));
}

export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** The "elapsed" cell: "queued 2.0 s", "running 4.1 s", "took 12 s". */
export function describeElapsed(t, now) {
  const secs = elapsedSeconds(t, now);
  if (secs === null) return "did not run";
  if (t.started_at == null) return `queued ${formatDuration(secs)}`;
  return isTerminal(t.status) ? `took ${formatDuration(secs)}` : `running ${formatDuration(secs)}`;
}

export function describeResult(result, max = 240) {
  if (result === null || result === undefined) return "";
  let text;
  try {
    text = typeof result === "string" ? result : JSON.stringify(result);
  } catch {
    text = String(result);
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function describeError(error) {
  if (!error) return "";
  const type = error.type ? `${error.type}: ` : "";
  return `${type}${error.message ?? "failed"}`;
}

/**
 * A token handed over in the address bar (`/?token=…`): the token, and the address without it,
 * so that it does not stay in the history or get copied along with the link.
 */
export function takeTokenFromUrl(href) {
  const url = new URL(href);
  const token = url.searchParams.get("token");
  if (token === null) return { token: null, cleanUrl: null };
  url.searchParams.delete("token");
  const query = url.searchParams.toString();
  return { token: token.trim() || null, cleanUrl: `${url.pathname}${query ? `?${query}` : ""}${url.hash}` };
}

/**
 * What a `connect_error` means. socket.io-client stops trying (`socket.active` false) when the
 * server refused the connection, which is how the gateway answers a bad or expired token.
 */
export function classifyConnectError(err, active) {
  const message = (err && err.message) || "connection failed";
  if (!active) return { kind: "refused", message };
  return { kind: "network", message };
}

/** The user id (`sub`) and expiry of a JWT, read without checking it (the server does that). */
export function peekToken(token) {
  try {
    const part = token.split(".")[1];
    const json = JSON.parse(
      new TextDecoder().decode(
        Uint8Array.from(atob(part.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0)),
      ),
    );
    return { user: typeof json.sub === "string" ? json.sub : null, exp: Number(json.exp) || null };
  } catch {
    return { user: null, exp: null };
  }
}

/**
 * How many runs each task type may have, from `GET /api/task-types`: `max_retries + 1` for the
 * types that retry, 1 for the others. Malformed entries are skipped.
 */
export function maxAttemptsByType(body) {
  const out = new Map();
  for (const type of Array.isArray(body?.task_types) ? body.task_types : []) {
    if (typeof type?.name !== "string") continue;
    const retries = type.retries?.max_retries;
    out.set(type.name, Number.isInteger(retries) && retries >= 0 ? retries + 1 : 1);
  }
  return out;
}

const pad2 = (n) => String(n).padStart(2, "0");

/** A Unix time (seconds) as the local wall-clock time "HH:MM:SS". */
export function formatClock(seconds) {
  const d = new Date(seconds * 1000);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/**
 * The row's note on where a task is in its life beyond its status: "retrying (attempt 2 of 6)"
 * between attempts (`attempt` is the coming one), "attempt 3 of 6" while a later attempt runs,
 * "due at 12:30:05" for a delayed task, "stalled: …" while a RUNNING task's worker misses its
 * heartbeats (`stalled: true`). `maxAttempts` (from the task types) may be unknown.
 * `clockOffset` is server time minus local time in seconds; under a second it is noise from
 * measuring it and is not applied.
 */
export function describePhase(t, { maxAttempts = null, clockOffset = 0 } = {}) {
  const of = Number.isInteger(maxAttempts) && maxAttempts > 0 ? ` of ${maxAttempts}` : "";
  const attempt = Number.isInteger(t.attempt) ? t.attempt : null;
  if (t.status === "RUNNING" && t.stalled === true) return "stalled: its worker has gone quiet";
  if (t.status === "RETRYING" && attempt !== null) return `retrying (attempt ${attempt}${of})`;
  if (t.status === "RUNNING" && attempt > 1) return `attempt ${attempt}${of}`;
  if (t.status === "PENDING" && Number.isFinite(t.eta)) {
    const skew = Math.abs(clockOffset) >= 1 ? clockOffset : 0;
    return `due at ${formatClock(t.eta - skew)}`;
  }
  return "";
}

/**
 * The ids a worker is busy with, as `GET /api/workers` lists them (`active`), less the ones this
 * page already knows have ended: Celery's inspect answer is cached and lags the task's end.
 */
export function busyIds(worker, statusOf) {
  const active = Array.isArray(worker?.active) ? worker.active : [];
  return active.filter((id) => typeof id === "string" && !isTerminal(statusOf(id)));
}

/**
 * The rolled-up `workflow` snapshots (the socket's `workflow` event, `GET /api/workflows/{id}`):
 * like tasks, one whose `seq` is not above the last applied is dropped.
 */
export class WorkflowStore {
  constructor() {
    this.workflows = new Map();
    this.dirty = new Set();
  }

  get size() {
    return this.workflows.size;
  }

  get(id) {
    return this.workflows.get(id);
  }

  apply(snap) {
    if (!snap || typeof snap.workflow_id !== "string" || !Number.isInteger(snap.seq)) return "invalid";
    const known = this.workflows.get(snap.workflow_id);
    if (known && snap.seq <= known.seq) return "stale";
    const percent = Math.max(known?.percent ?? 0, clampPercent(snap.percent));
    this.workflows.set(snap.workflow_id, { ...snap, percent });
    this.dirty.add(snap.workflow_id);
    return "applied";
  }

  remove(id) {
    if (this.workflows.delete(id)) this.dirty.add(id);
  }

  clear() {
    for (const id of this.workflows.keys()) this.dirty.add(id);
    this.workflows.clear();
  }

  takeDirty() {
    const ids = [...this.dirty];
    this.dirty.clear();
    return ids;
  }

  list() {
    return [...this.workflows.values()].sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0));
  }
}

/** A workflow's line: "chain · 2 of 3 tasks done · 1 running". */
export function describeWorkflow(w) {
  const children = Array.isArray(w?.children) ? w.children : [];
  const count = (pred) => children.filter((c) => pred(c.status)).length;
  const done = count((s) => s === "COMPLETED");
  const parts = [`${w?.kind ?? "workflow"}`, `${done} of ${children.length} tasks done`];
  const running = count((s) => s === "RUNNING" || s === "RETRYING");
  if (running) parts.push(`${running} running`);
  const waiting = count((s) => s === "PENDING");
  if (waiting && !isTerminal(w?.status)) parts.push(`${waiting} waiting`);
  const failed = count((s) => s === "FAILED" || s === "TIMED_OUT");
  if (failed) parts.push(`${failed} failed`);
  const cancelled = count((s) => s === "CANCELLED");
  if (cancelled) parts.push(`${cancelled} cancelled`);
  const gone = count((s) => s === "EXPIRED");
  if (gone) parts.push(`${gone} no longer kept`);
  return parts.join(" · ");
}
