// The taskgate page: one Socket.IO connection (the official client), a list of live progress
// bars, forms for the demo tasks, and a panel of queues and workers. State rules live in state.js.

import { io } from "/vendor/socket.io-client/socket.io.esm.min.js";
import { DEMO_TASKS, QUEUES, buildSubmission } from "./forms.js";
import {
  TaskStore,
  canCancel,
  classifyConnectError,
  describeElapsed,
  describeError,
  describePhase,
  describeResult,
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
const rows = new Map();
const ui = {
  connection: $("#connection"),
  notice: $("#notice"),
  tokenForm: $("#token-form"),
  who: $("#who"),
  forms: $("#forms"),
  tasks: $("#tasks"),
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

// Exposed for the browser tests and for a curious person in the console; read-only use.
window.taskgate = {
  store,
  get socket() {
    return socket;
  },
  get taskTypesLoaded() {
    return taskTypesLoaded;
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
  for (const button of document.querySelectorAll(".task-form button[type=submit]")) {
    button.disabled = state !== "connected";
    button.title = state === "connected" ? "" : "Not connected to the gateway";
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
    historyLoaded = false;
    scheduleRender();
  }
  ui.who.hidden = !user;
  ui.who.textContent = user ? `signed in as ${user}` : "";
  setConnection("connecting");
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
    if (store.apply(snap) === "applied") scheduleRender();
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
      for (const snap of body.tasks) store.apply(snap);
      scheduleRender();
    }
  } catch {
    // The socket brings the live ones anyway.
  }
}

/** The task types, for the retry counts; tried again on the next connect if this fails. */
async function loadTaskTypes() {
  try {
    const { status, body } = await api("/api/task-types");
    if (status !== 200) return;
    maxAttempts = maxAttemptsByType(body);
    taskTypesLoaded = true;
    for (const [id, row] of rows) {
      const t = store.get(id);
      if (t) updateRow(row, t);
    }
  } catch {
    // Rows say "attempt n" without "of m" meanwhile.
  }
}

// ---- queues and workers panel ------------------------------------------------------------

let clusterTimer = null;
let clusterRun = 0;

async function refreshCluster() {
  clearTimeout(clusterTimer);
  const run = ++clusterRun;
  let next = CLUSTER_EVERY_MS;
  if (token && socket?.connected) {
    const [queues, workers] = await Promise.all([
      fetchPanel("/api/queues", "queues"),
      fetchPanel("/api/workers", "workers"),
    ]);
    if (run !== clusterRun) return; // a newer refresh started meanwhile
    renderCluster(queues, workers);
    ui.cluster.dataset.loaded = "true";
    if (queues.items) offerQueues(queues.items.map((q) => q.name));
    if (queues.missing && workers.missing) next = CLUSTER_MISSING_EVERY_MS;
  } else {
    const why = { why: "not connected" };
    renderCluster(why, why);
  }
  clusterTimer = setTimeout(refreshCluster, next);
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

function renderCluster(queues, workers) {
  const root = document.createDocumentFragment();
  const qHead = el("h3", {}, "Queues");
  root.append(qHead);
  if (queues.items) {
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
  if (workers.items) {
    const list = el("ul", { className: "workers" });
    for (const w of workers.items) {
      const active = Array.isArray(w.active) ? w.active.length : 0;
      list.append(
        el("li", { className: "worker" }, [
          el("span", { className: "w-name", title: w.name }, w.name),
          el("span", { className: "w-queues" }, `queues: ${(w.queues || []).join(", ") || "–"}`),
          el(
            "span",
            { className: "w-stats" },
            `${active} of ${w.concurrency ?? "?"} busy · ${w.processed ?? 0} processed`,
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

function buildForms() {
  for (const spec of DEMO_TASKS) {
    const form = el("form", { className: "task-form", dataset: { task: spec.name }, noValidate: true });
    const id = (name) => `f-${spec.name.replace(".", "-")}-${name}`;
    const inputs = spec.fields.map((f) => {
      const input = el("input", {
        id: id(f.name),
        name: f.name,
        value: String(f.value),
        type: f.type === "str" ? "text" : "number",
      });
      if (f.type !== "str") {
        input.min = String(f.min);
        input.max = String(f.max);
        input.step = String(f.step ?? 1);
        input.inputMode = f.type === "int" ? "numeric" : "decimal";
      }
      return el("div", { className: "field" }, [el("label", { htmlFor: id(f.name) }, f.label), input]);
    });
    const queue = el("select", { id: id("queue"), name: "queue" }, [
      ...QUEUES.map((q) => el("option", { value: q, selected: q === spec.queue }, q)),
    ]);
    const priority = el("select", { id: id("priority"), name: "priority" }, [
      ...Array.from({ length: 10 }, (_, i) => el("option", { value: String(i) }, String(i))),
    ]);
    const out = el("output", { className: "form-status", role: "status" });
    form.append(
      el("div", { className: "form-head" }, [
        el("h3", {}, spec.name),
        el("p", { className: "muted" }, spec.about),
      ]),
      el("div", { className: "fields" }, [
        ...inputs,
        el("div", { className: "field" }, [el("label", { htmlFor: id("queue") }, "Queue"), queue]),
        el("div", { className: "field" }, [el("label", { htmlFor: id("priority") }, "Priority"), priority]),
      ]),
      el("div", { className: "form-foot" }, [
        el("button", { type: "submit", disabled: true, title: "Not connected to the gateway" }, "Run"),
        out,
      ]),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submitForm(form, spec, out);
    });
    ui.forms.append(form);
  }
}

async function submitForm(form, spec, out) {
  const values = Object.fromEntries(new FormData(form).entries());
  const built = buildSubmission(spec, values);
  out.dataset.taskId = "";
  if (built.error) {
    showFormStatus(out, built.error.message, true);
    return;
  }
  if (!socket?.connected) {
    showFormStatus(out, "Not connected to the gateway.", true);
    return;
  }
  const button = $("button[type=submit]", form);
  button.disabled = true;
  try {
    const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("submit", built.body);
    if (ack?.error) {
      const field = ack.error.details?.field ? ` (${ack.error.details.field})` : "";
      showFormStatus(out, `${ack.error.message}${field}`, true);
      return;
    }
    store.addSubmitted(ack, { task: spec.name, queue: built.body.queue ?? spec.queue, now: serverNow() });
    scheduleRender();
    out.dataset.taskId = ack.task_id;
    showFormStatus(out, `Submitted ${ack.task_id.slice(0, 8)}.`, false);
  } catch {
    showFormStatus(out, "No answer from the gateway; the task may or may not have been accepted.", true);
  } finally {
    button.disabled = !socket?.connected;
  }
}

/** Queues the gateway knows about become choices in every form. */
function offerQueues(names) {
  for (const select of document.querySelectorAll(".task-form select[name=queue]")) {
    const have = new Set([...select.options].map((o) => o.value));
    for (const name of names) {
      if (typeof name === "string" && name && !have.has(name))
        select.append(el("option", { value: name }, name));
    }
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
  renderSummary();
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
  ui.empty.hidden = store.size > 0;
  ui.summary.textContent = store.size ? `${active} running · ${done} done · ${failed} failed or stopped` : "";
}

$("#clear-ended").addEventListener("click", () => {
  for (const t of store.list()) if (isTerminal(t.status)) store.remove(t.task_id);
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

// ---- helpers -----------------------------------------------------------------------------

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "role") node.setAttribute("role", value);
    else node[key] = value;
  }
  node.append(...(Array.isArray(children) ? children : [children]));
  return node;
}

// ---- start -------------------------------------------------------------------------------

buildForms();
const initial = adoptTokenFromUrl();
if (initial) {
  start(initial);
  refreshCluster();
} else {
  setConnection("offline", "– not signed in");
  showNotice(
    "No token yet. Open the link that taskgate up prints (it ends in /?token=…), " +
      "or paste a token from taskgate token USER.",
    { askToken: true, kind: "info" },
  );
}
