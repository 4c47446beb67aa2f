// The taskgate page: one Socket.IO connection (the official client), a list of live progress
// bars, a form for every task type the gateway offers (GET /api/task-types), and a panel of
// queues and workers. State rules live in state.js, form rules in forms.js.

import { io } from "/vendor/socket.io-client/socket.io.esm.min.js";
import { buildSubmission, fieldFor, formModels, labelFor, serverErrors } from "./forms.js";
import { clearErrors, el, readForm, renderForm, showErrors } from "./formview.js";
import {
  TaskStore,
  WorkflowStore,
  busyIds,
  canCancel,
  classifyConnectError,
  describeElapsed,
  describeError,
  describePhase,
  describeResult,
  describeWorkflow,
  isTerminal,
  maxAttemptsByType,
  peekToken,
  takeTokenFromUrl,
} from "./state.js";

const TOKEN_KEY = "taskgate.token";
const ACK_TIMEOUT_MS = 10_000;
const CLUSTER_EVERY_MS = 5_000;
const CLUSTER_MISSING_EVERY_MS = 60_000;
// After this long without a connection the indicator says "offline" (it keeps retrying).
const OFFLINE_AFTER_MS = 15_000;

const $ = (sel, root = document) => root.querySelector(sel);
const store = new TaskStore({ limit: 200 });
const workflows = new WorkflowStore();
const rows = new Map();
const flowRows = new Map();
// Workflows asked for over HTTP (a task of one showed up before any `workflow` event).
const flowsAsked = new Set();
const ui = {
  connection: $("#connection"),
  notice: $("#notice"),
  tokenForm: $("#token-form"),
  who: $("#who"),
  forms: $("#forms"),
  tasks: $("#tasks"),
  workflows: $("#workflows"),
  empty: $("#empty"),
  summary: $("#summary"),
  cluster: $("#cluster"),
  template: $("#task-template"),
};

let socket = null;
let token = null;
let clockOffset = 0; // server time minus local time, seconds (from heartbeats)
let disconnectedSince = null;
let offlineTimer = null;
let attempt = 0;
let renderQueued = false;
let historyLoaded = false;
let currentUser = null;
// Runs each task type may have (GET /api/task-types), for "attempt n of m".
let maxAttempts = new Map();
let taskTypesLoaded = false;
// The task a Run just submitted: its row is kept in view while it changes (it grows as messages
// and results come, and the browser's scroll anchoring would push it away), until it ends or the
// user scrolls.
let follow = null;

// Exposed for the browser tests and for a curious person in the console; read-only use.
window.taskgate = {
  store,
  get socket() {
    return socket;
  },
  workflows,
  get taskTypesLoaded() {
    return taskTypesLoaded;
  },
  get clusterRenders() {
    return clusterRenders;
  },
};

const serverNow = () => Date.now() / 1000 + clockOffset;

// ---- token -------------------------------------------------------------------------------

function adoptTokenFromUrl() {
  const { token: fromUrl, cleanUrl } = takeTokenFromUrl(window.location.href);
  if (cleanUrl !== null) {
    if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
    // Out of the address bar (and the history): it must not be copied along with the link.
    history.replaceState(history.state, "", cleanUrl);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showNotice(text, { askToken = false, kind = "error" } = {}) {
  ui.notice.hidden = false;
  ui.notice.dataset.kind = kind;
  $(".notice-text", ui.notice).textContent = text;
  ui.tokenForm.hidden = !askToken;
}

function hideNotice() {
  ui.notice.hidden = true;
}

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("#token-input").value.trim();
  if (!value) return;
  $("#token-input").value = "";
  sessionStorage.setItem(TOKEN_KEY, value);
  start(value);
});

// ---- connection --------------------------------------------------------------------------

function setConnection(state, detail = "") {
  const labels = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  };
  ui.connection.dataset.state = state;
  $(".label", ui.connection).textContent = detail ? `${labels[state]} ${detail}` : labels[state];
  document.body.dataset.connection = state;
  syncRunButtons();
}

function syncRunButtons() {
  const connected = ui.connection.dataset.state === "connected";
  for (const button of document.querySelectorAll(".task-form button[type=submit]")) {
    if (button.dataset.busy) continue;
    button.disabled = !connected;
    button.title = connected ? "" : "Not connected to the gateway";
  }
}

function start(newToken) {
  token = newToken;
  if (socket) {
    socket.removeAllListeners();
    socket.io.removeAllListeners();
    socket.disconnect();
  }
  hideNotice();
  // Only for display: the gateway checks the token (and its expiry, with its own clock).
  const { user } = peekToken(token);
  if (user !== currentUser) {
    // Another user on this tab: none of what we show is theirs.
    currentUser = user;
    store.clear();
    workflows.clear();
    flowsAsked.clear();
    historyLoaded = false;
    scheduleRender();
  }
  ui.who.hidden = !user;
  ui.who.textContent = user ? `signed in as ${user}` : "";
  setConnection("connecting");
  refreshCluster(); // not connected yet: the panel says it waits, as the header does
  socket = io({
    auth: { token },
    forceNew: true,
    transports: ["websocket"],
    reconnectionDelay: 500,
    reconnectionDelayMax: 5000,
    timeout: 10_000,
  });

  socket.on("connect", () => {
    disconnectedSince = null;
    attempt = 0;
    clearTimeout(offlineTimer);
    setConnection("connected");
    hideNotice();
    // Catch up on whatever changed while we were away (the server also sends every live task).
    const watch = store.watchMap();
    if (Object.keys(watch).length) {
      socket.timeout(ACK_TIMEOUT_MS).emit("watch", { tasks: watch }, () => {});
    }
    refreshCluster();
    if (!taskTypesLoaded) loadTaskTypes();
    if (!historyLoaded) {
      // After the socket is accepted, so a refused token never costs a failed HTTP call.
      historyLoaded = true;
      loadHistory();
    }
  });

  socket.on("disconnect", (reason) => {
    if (reason === "io server disconnect") {
      // The server closed this session; try again (a refused token ends in connect_error).
      socket.connect();
    }
    lostConnection();
    refreshCluster();
  });

  socket.on("connect_error", (err) => {
    const { kind, message } = classifyConnectError(err, socket.active);
    if (kind === "refused") {
      refused(message);
      return;
    }
    ui.connection.title = message;
    lostConnection();
  });

  socket.io.on("reconnect_attempt", (n) => {
    attempt = n;
    lostConnection();
  });

  socket.on("task", (snap) => {
    const before = store.get(snap?.task_id)?.status;
    if (store.apply(snap) !== "applied") return;
    scheduleRender();
    const t = store.get(snap.task_id);
    if (t.status !== before) statusChanged(t);
    if (typeof t.workflow_id === "string" && t.workflow_id) askWorkflow(t.workflow_id);
  });

  socket.on("workflow", (snap) => {
    if (workflows.apply(snap) === "applied") scheduleRender();
  });

  socket.on("heartbeat", (beat) => {
    if (beat && Number.isFinite(beat.ts)) clockOffset = beat.ts - Date.now() / 1000;
  });
}

/** Not connected, still trying: "reconnecting", and "offline" once it has lasted a while. */
function lostConnection() {
  if (!socket || socket.connected) return;
  if (disconnectedSince === null) {
    disconnectedSince = Date.now();
    clearTimeout(offlineTimer);
    offlineTimer = setTimeout(lostConnection, OFFLINE_AFTER_MS + 50);
  }
  const offline = !navigator.onLine || Date.now() - disconnectedSince >= OFFLINE_AFTER_MS;
  const tries = attempt ? `(attempt ${attempt})` : "";
  setConnection(offline ? "offline" : "reconnecting", offline ? `– retrying ${tries}`.trim() : tries);
}

function refused(message) {
  clearTimeout(offlineTimer);
  if (socket) {
    socket.removeAllListeners();
    socket.io.removeAllListeners();
    socket.disconnect();
    socket = null;
  }
  sessionStorage.removeItem(TOKEN_KEY);
  ui.who.hidden = true;
  setConnection("offline", "– not signed in");
  refreshCluster();
  showNotice(
    `The gateway refused this token: ${message}. Get a new one (taskgate token USER) and ` +
      "open /?token=…, or paste it here.",
    { askToken: true },
  );
}

window.addEventListener("offline", () => {
  if (socket) lostConnection();
});
window.addEventListener("online", () => {
  if (socket && !socket.connected) lostConnection();
});

// ---- HTTP --------------------------------------------------------------------------------

async function api(path) {
  const resp = await fetch(path, {
    headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    signal: AbortSignal.timeout(5000),
    cache: "no-store",
  });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  return { status: resp.status, body };
}

/** Older tasks than the ones the socket sends on connect (those are live or recent). */
async function loadHistory() {
  try {
    const { status, body } = await api("/api/tasks?limit=50");
    if (status === 200 && Array.isArray(body?.tasks)) {
      for (const snap of body.tasks) {
        store.apply(snap);
        if (typeof snap?.workflow_id === "string" && snap.workflow_id) askWorkflow(snap.workflow_id);
      }
      scheduleRender();
    }
  } catch {
    // The socket brings the live ones anyway.
  }
}

/** The task types: a form for each, and the retry counts; tried again on the next connect. */
async function loadTaskTypes() {
  try {
    const { status, body } = await api("/api/task-types");
    if (status !== 200) {
      ui.forms.dataset.state = "failed";
      ui.forms.replaceChildren(el("p", { className: "muted" }, `Task types unavailable (HTTP ${status}).`));
      return;
    }
    maxAttempts = maxAttemptsByType(body);
    buildForms(formModels(body));
    taskTypesLoaded = true;
    for (const [id, row] of rows) {
      const t = store.get(id);
      if (t) updateRow(row, t);
    }
  } catch {
    ui.forms.dataset.state = "failed";
    ui.forms.replaceChildren(el("p", { className: "muted" }, "Task types unavailable; trying again on reconnect."));
  }
}

/** The rolled-up state of a workflow whose task showed up before any `workflow` event. */
async function askWorkflow(id) {
  if (flowsAsked.has(id) || workflows.get(id)) return;
  flowsAsked.add(id);
  try {
    const { status, body } = await api(`/api/workflows/${encodeURIComponent(id)}`);
    if (status === 200 && workflows.apply(body) === "applied") scheduleRender();
  } catch {
    flowsAsked.delete(id); // the next task event asks again
  }
}

// ---- queues and workers panel ------------------------------------------------------------

let clusterTimer = null;
let clusterRun = 0;
let clusterRenders = 0;
let clusterSoon = null;
// The last answers, kept while connected; `null` until they come.
const cluster = { queues: null, workers: null };

/**
 * Load both halves of the panel while connected; each is drawn as soon as it comes (the workers'
 * answer waits for Celery's inspect, seconds). Not connected, the panel says so, as the header
 * does, and shows nothing that could be out of date.
 */
async function refreshCluster() {
  clearTimeout(clusterTimer);
  clearTimeout(clusterSoon);
  const run = ++clusterRun;
  if (!(token && socket?.connected)) {
    cluster.queues = cluster.workers = null;
    renderCluster();
    return; // the next connect refreshes
  }
  renderCluster();
  const got = (key) => (answer) => {
    if (run !== clusterRun || !socket?.connected) return;
    cluster[key] = answer;
    renderCluster();
  };
  const [queues, workers] = await Promise.all([
    fetchPanel("/api/queues", "queues").then(got("queues")),
    fetchPanel("/api/workers", "workers").then(got("workers")),
  ]).then(() => [cluster.queues, cluster.workers]);
  if (run !== clusterRun) return; // a newer refresh started meanwhile
  const next = queues?.missing && workers?.missing ? CLUSTER_MISSING_EVERY_MS : CLUSTER_EVERY_MS;
  clusterTimer = setTimeout(refreshCluster, next);
}

/** A task started or ended: the busy counts change; refresh soon (coalesced). */
function statusChanged(t) {
  if (isTerminal(t.status)) renderCluster(); // drop it from the counts at once
  clearTimeout(clusterSoon);
  if (socket?.connected) clusterSoon = setTimeout(refreshCluster, 400);
}

async function fetchPanel(path, key) {
  try {
    const { status, body } = await api(path);
    if (status === 200 && Array.isArray(body?.[key])) return { items: body[key] };
    if (status === 404) return { missing: true, why: "not offered by this gateway" };
    return { why: body?.error?.message || `HTTP ${status}` };
  } catch (err) {
    return { why: err?.name === "TimeoutError" ? "timed out" : "unreachable" };
  }
}

function renderCluster() {
  clusterRenders += 1;
  const connected = Boolean(token && socket?.connected);
  const { queues, workers } = cluster;
  const state = !connected ? "waiting" : queues && workers ? "loaded" : "loading";
  ui.cluster.dataset.state = state;
  ui.cluster.dataset.loaded = String(state === "loaded");
  ui.cluster.setAttribute("aria-busy", String(state === "loading"));
  if (!connected) {
    ui.cluster.replaceChildren(
      el("p", { className: "muted waiting" }, "Shown once the page is connected to the gateway."),
    );
    return;
  }
  const root = document.createDocumentFragment();
  root.append(el("h3", {}, "Queues"));
  if (!queues) root.append(el("p", { className: "muted loading" }, "Loading…"));
  else if (queues.items) {
    const list = el("ul", { className: "queues" });
    for (const q of queues.items) {
      list.append(
        el("li", { dataset: { queue: q.name } }, [
          el("span", { className: "q-name" }, q.name),
          el("span", { className: "q-depth" }, `${q.depth} waiting`),
        ]),
      );
    }
    if (!queues.items.length) list.append(el("li", { className: "muted" }, "none"));
    root.append(list);
  } else {
    root.append(el("p", { className: "muted unavailable" }, `Unavailable (${queues.why}).`));
  }
  root.append(el("h3", {}, "Workers"));
  if (!workers) root.append(el("p", { className: "muted loading" }, "Loading… (asking the workers)"));
  else if (workers.items) {
    const list = el("ul", { className: "workers" });
    for (const w of workers.items) {
      const busy = busyIds(w, (id) => store.get(id)?.status);
      list.append(
        el("li", { className: "worker", dataset: { busy: busy.join(" ") } }, [
          el("span", { className: "w-name", title: w.name }, w.name),
          el("span", { className: "w-queues" }, `queues: ${(w.queues || []).join(", ") || "–"}`),
          el(
            "span",
            { className: "w-stats" },
            `${busy.length} of ${w.concurrency ?? "?"} busy · ${w.processed ?? 0} processed`,
          ),
        ]),
      );
    }
    if (!workers.items.length) list.append(el("li", { className: "muted" }, "no worker is running"));
    root.append(list);
  } else {
    root.append(el("p", { className: "muted unavailable" }, `Unavailable (${workers.why}).`));
  }
  ui.cluster.replaceChildren(root);
}

// ---- forms -------------------------------------------------------------------------------

/** A form for each task type; a form being typed in is kept when the types load again. */
function buildForms(models) {
  const old = new Map([...ui.forms.querySelectorAll(".task-form")].map((f) => [f.dataset.task, f]));
  const forms = models.map((model) => {
    const kept = old.get(model.name);
    if (kept && JSON.stringify(kept._model) === JSON.stringify(model)) return kept;
    return renderForm(model, { onSubmit: submitForm });
  });
  if (!forms.length) forms.push(el("p", { className: "muted" }, "This gateway offers no task types."));
  ui.forms.replaceChildren(...forms);
  ui.forms.dataset.state = "loaded";
  syncRunButtons();
}

function statusOf(form) {
  return $("output.form-status", form);
}

async function submitForm(form) {
  const model = form._model;
  const out = statusOf(form);
  clearErrors(form);
  const built = buildSubmission(model, readForm(form));
  out.dataset.taskId = "";
  if (built.errors) {
    const unplaced = showErrors(form, built.errors);
    const first = built.errors[0];
    showFormStatus(out, [`${labelFor(model, first.field)}: ${first.message}`, ...unplaced].join("; "), true);
    return;
  }
  if (!socket?.connected) {
    showFormStatus(out, "Not connected to the gateway.", true);
    return;
  }
  const button = $("button[type=submit]", form);
  button.disabled = true;
  button.dataset.busy = "1";
  try {
    const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("submit", built.body);
    if (ack?.error) {
      const problems = serverErrors(ack.error).map((e) => ({ ...e, field: fieldFor(model, e.field) }));
      const unplaced = showErrors(form, problems);
      const named = problems
        .filter((p) => p.field !== "form")
        .map((p) => `${labelFor(model, p.field)}: ${p.message}`);
      showFormStatus(out, named.length ? named.join("; ") : [ack.error.message, ...unplaced].join("; "), true);
      return;
    }
    store.addSubmitted(ack, { task: model.name, queue: built.body.queue ?? model.queue, now: serverNow() });
    follow = ack.task_id;
    scheduleRender();
    out.dataset.taskId = ack.task_id;
    showFormStatus(out, `Submitted ${ack.task_id.slice(0, 8)}.`, false);
  } catch {
    showFormStatus(out, "No answer from the gateway; the task may or may not have been accepted.", true);
  } finally {
    delete button.dataset.busy;
    syncRunButtons();
  }
}

function showFormStatus(out, text, isError) {
  out.textContent = text;
  out.classList.toggle("error", isError);
}

// ---- task list ---------------------------------------------------------------------------

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(render);
}

function render() {
  renderQueued = false;
  let added = false;
  for (const id of store.takeDirty()) {
    const t = store.get(id);
    let row = rows.get(id);
    if (!t) {
      row?.remove();
      rows.delete(id);
      continue;
    }
    if (!row) {
      row = makeRow(t);
      rows.set(id, row);
      added = true;
    }
    updateRow(row, t);
  }
  if (added) {
    // Newest first; appending moves nodes, so this only reorders.
    const order = store.list();
    for (const t of order) {
      const row = rows.get(t.task_id);
      if (row) ui.tasks.append(row);
    }
  }
  renderWorkflows();
  renderSummary();
  if (follow && rows.has(follow)) {
    // "nearest" moves nothing when the row is already in view, in the page and in the task list.
    rows.get(follow).scrollIntoView({ block: "nearest" });
    if (isTerminal(store.get(follow)?.status)) follow = null;
  }
}

// The user scrolls or types: stop keeping the new task in view.
for (const type of ["wheel", "touchstart", "keydown"]) {
  window.addEventListener(type, () => (follow = null), { passive: true });
}

function renderWorkflows() {
  let added = false;
  for (const id of workflows.takeDirty()) {
    const w = workflows.get(id);
    let row = flowRows.get(id);
    if (!w) {
      row?.remove();
      flowRows.delete(id);
      continue;
    }
    if (!row) {
      row = el("li", { className: "workflow", dataset: { workflowId: id } }, [
        el("div", { className: "task-head" }, [
          el("span", { className: "task-name" }, w.kind),
          el("code", { className: "task-id", title: id }, id.slice(0, 8)),
          el("span", { className: "status" }),
        ]),
        el("div", { className: "bar", role: "progressbar" }, el("div", { className: "fill" })),
        el("p", { className: "flow-line" }),
      ]);
      const bar = $(".bar", row);
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-label", `${w.kind} ${id.slice(0, 8)}`);
      flowRows.set(id, row);
      added = true;
    }
    row.dataset.status = w.status;
    row.dataset.seq = String(w.seq);
    const status = $(".status", row);
    status.textContent = w.status;
    status.dataset.status = w.status;
    const pct = Math.round(w.percent * 10) / 10;
    const bar = $(".bar", row);
    bar.setAttribute("aria-valuenow", String(pct));
    bar.setAttribute("aria-valuetext", `${pct}%, ${w.status}`);
    $(".fill", bar).style.width = `${w.percent}%`;
    $(".flow-line", row).textContent = `${Math.floor(pct)}% · ${describeWorkflow(w)}`;
    // The tasks of this workflow say which one they belong to.
    for (const child of w.children ?? []) {
      const taskRow = rows.get(child.task_id);
      if (taskRow) setFlowTag(taskRow, w);
    }
  }
  if (added) for (const w of workflows.list()) ui.workflows.append(flowRows.get(w.workflow_id));
  ui.workflows.hidden = workflows.size === 0;
}

function setFlowTag(row, w) {
  const tag = $(".task-flow", row);
  tag.hidden = false;
  tag.textContent = `in ${w?.kind ?? "workflow"} ${row.dataset.workflowId.slice(0, 8)}`;
}

function makeRow(t) {
  const row = ui.template.content.firstElementChild.cloneNode(true);
  row.dataset.taskId = t.task_id;
  $(".task-id", row).textContent = t.task_id.slice(0, 8);
  $(".task-id", row).title = t.task_id;
  $(".cancel", row).addEventListener("click", () => cancelTask(t.task_id, row));
  return row;
}

function updateRow(row, t) {
  row.dataset.status = t.status;
  row.dataset.task = t.task ?? "";
  row.dataset.seq = String(t.seq);
  $(".task-name", row).textContent = t.task ?? "task";
  $(".task-queue", row).textContent = t.queue ?? "";
  if (typeof t.workflow_id === "string" && t.workflow_id) {
    row.dataset.workflowId = t.workflow_id;
    setFlowTag(row, workflows.get(t.workflow_id));
  }
  row.dataset.stalled = String(t.status === "RUNNING" && t.stalled === true);
  const status = $(".status", row);
  status.textContent = t.status;
  status.dataset.status = t.status;
  const phase = $(".phase", row);
  phase.textContent = describePhase(t, { maxAttempts: maxAttempts.get(t.task), clockOffset });
  phase.hidden = !phase.textContent;
  const pct = Math.round(t.percent * 10) / 10;
  const bar = $(".bar", row);
  const message = t.progress?.message ?? "";
  bar.setAttribute("aria-valuenow", String(pct));
  bar.setAttribute("aria-valuetext", `${pct}%${message ? `, ${message}` : ""}, ${t.status}`);
  bar.setAttribute("aria-label", `${t.task ?? "task"} ${t.task_id.slice(0, 8)}`);
  $(".fill", bar).style.width = `${t.percent}%`;
  $(".percent", row).textContent = `${Math.floor(pct)}%`;
  $(".message", row).textContent = message;
  $(".elapsed", row).textContent = describeElapsed(t, serverNow());
  const cancel = $(".cancel", row);
  cancel.setAttribute("aria-label", `Cancel ${t.task ?? "task"} ${t.task_id.slice(0, 8)}`);
  cancel.hidden = !canCancel(t.status);
  if (isTerminal(t.status)) cancel.disabled = true;
  const outcome = $(".outcome", row);
  if (t.status === "COMPLETED" && t.result != null) {
    outcome.hidden = false;
    outcome.className = "outcome result";
    outcome.textContent = `Result: ${describeResult(t.result)}`;
  } else if (t.error) {
    outcome.hidden = false;
    outcome.className = "outcome error";
    outcome.textContent = describeError(t.error);
  } else if (t.status === "TIMED_OUT" || t.status === "CANCELLED") {
    outcome.hidden = false;
    outcome.className = "outcome muted";
    outcome.textContent = t.status === "CANCELLED" ? "Cancelled." : "Timed out.";
  } else if (!row.dataset.cancelError) {
    outcome.hidden = true;
  }
}

async function cancelTask(taskId, row) {
  const button = $(".cancel", row);
  button.disabled = true;
  button.textContent = "Cancelling…";
  delete row.dataset.cancelError;
  try {
    const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("cancel", { task_id: taskId });
    if (ack?.error) throw new Error(ack.error.message);
  } catch (err) {
    const t = store.get(taskId);
    if (t && !isTerminal(t.status)) {
      button.disabled = false;
      button.textContent = "Cancel";
      row.dataset.cancelError = "1";
      const outcome = $(".outcome", row);
      outcome.hidden = false;
      outcome.className = "outcome error";
      outcome.textContent = `Could not cancel: ${err?.message || "no answer"}`;
    }
  }
}

function renderSummary() {
  const { active, done, failed } = store.summary();
  ui.empty.hidden = store.size > 0 || workflows.size > 0;
  ui.summary.textContent = store.size ? `${active} running · ${done} done · ${failed} failed or stopped` : "";
}

$("#clear-ended").addEventListener("click", () => {
  for (const t of store.list()) if (isTerminal(t.status)) store.remove(t.task_id);
  for (const w of workflows.list()) if (isTerminal(w.status)) workflows.remove(w.workflow_id);
  scheduleRender();
});

// Elapsed times move on their own.
setInterval(() => {
  const now = serverNow();
  for (const [id, row] of rows) {
    const t = store.get(id);
    if (t && !isTerminal(t.status)) $(".elapsed", row).textContent = describeElapsed(t, now);
  }
}, 1000);

// ---- start -------------------------------------------------------------------------------

const initial = adoptTokenFromUrl();
if (initial) {
  start(initial);
} else {
  setConnection("offline", "– not signed in");
  showNotice(
    "No token yet. Open the link that taskgate up prints (it ends in /?token=…), " +
      "or paste a token from taskgate token USER.",
    { askToken: true, kind: "info" },
  );
}
