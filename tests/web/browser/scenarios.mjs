// Browser scenarios for the web page: Playwright (playwright-core) driving Debian's chromium
// against a real gateway and a real Celery worker. tests/web/test_web.py runs one scenario per
// call:
//
//   TASKGATE_URL=… TASKGATE_TOKEN=… node tests/web/browser/scenarios.mjs count
//
// The `restart` scenario asks its caller to restart the gateway: it prints `@@restart-gateway` on
// stdout and waits for a line `restarted` on stdin. Each scenario prints one JSON line on success.
import { createInterface } from "node:readline";

import { check, env, launchBrowser, withTimeout } from "./lib.mjs";

const BASE = env("TASKGATE_URL").replace(/\/$/, "");
const TERMINAL = ["COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"];
const SCENARIO_TIMEOUT_MS = 100_000;

// Chromium reports failed connections as console errors; only the restart scenario expects them.
const NETWORK_ERROR =
  /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE|Failed to load resource: net::/;

function watchConsole(page) {
  const errors = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(`console: ${msg.text()} @ ${msg.location()?.url ?? ""}`);
  });
  page.on("pageerror", (err) => errors.push(`pageerror: ${err.message}`));
  page.on("crash", () => errors.push("page crashed"));
  return errors;
}

/** Records every aria-valuenow and data-seq each row takes, to check that none goes back. */
async function recordBars(page) {
  await page.evaluate(() => {
    window.__bars = {};
    const note = (row) => {
      const id = row.dataset.taskId;
      const bar = row.querySelector("[role=progressbar]");
      const list = (window.__bars[id] ??= []);
      const entry = {
        now: Number(bar.getAttribute("aria-valuenow")),
        seq: Number(row.dataset.seq),
        status: row.dataset.status,
      };
      const last = list[list.length - 1];
      if (!last || last.now !== entry.now || last.seq !== entry.seq || last.status !== entry.status)
        list.push(entry);
    };
    new MutationObserver((records) => {
      for (const r of records) {
        const row = r.target.closest?.("li.task");
        if (row) note(row);
      }
    }).observe(document.querySelector("#tasks"), {
      subtree: true,
      childList: true,
      attributes: true,
      attributeFilter: ["aria-valuenow", "data-seq", "data-status"],
    });
  });
}

async function checkBarsNeverWentBack(page, taskId) {
  const samples = await page.evaluate((id) => window.__bars[id] ?? [], taskId);
  check(samples.length > 0, `no bar samples for ${taskId}`);
  for (let i = 1; i < samples.length; i++) {
    check(samples[i].now >= samples[i - 1].now, `bar went back: ${JSON.stringify(samples)}`);
    check(samples[i].seq >= samples[i - 1].seq, `seq went back: ${JSON.stringify(samples)}`);
  }
  return samples;
}

async function openPage(context, token = env("TASKGATE_TOKEN")) {
  const page = await context.newPage();
  const errors = watchConsole(page);
  await page.goto(`${BASE}/?token=${encodeURIComponent(token)}`);
  return { page, errors };
}

async function waitConnected(page, timeout = 15_000) {
  await page.waitForSelector('#connection[data-state="connected"]', { timeout });
}

/** Fill a demo task's form, press Run, and return the id the ack gave. */
async function submitFromForm(page, task, values = {}) {
  const form = page.locator(`form[data-task="${task}"]`);
  for (const [name, value] of Object.entries(values)) {
    const field = form.locator(`[name="${name}"]`);
    if ((await field.evaluate((el) => el.tagName)) === "SELECT") await field.selectOption(String(value));
    else await field.fill(String(value));
  }
  const out = form.locator("output");
  await out.evaluate((el) => (el.dataset.taskId = ""));
  await form.locator("button[type=submit]").click();
  await page.waitForFunction(
    (el) => el.dataset.taskId || el.classList.contains("error"),
    await out.elementHandle(),
    { timeout: 10_000 },
  );
  const taskId = await out.getAttribute("data-task-id");
  check(taskId, `submit of ${task} failed: ${await out.textContent()}`);
  return taskId;
}

function row(page, taskId) {
  return page.locator(`li.task[data-task-id="${taskId}"]`);
}

async function waitStatus(page, taskId, statuses, timeout = 30_000) {
  const wanted = Array.isArray(statuses) ? statuses : [statuses];
  await page.waitForFunction(
    ([id, want]) => want.includes(document.querySelector(`li.task[data-task-id="${id}"]`)?.dataset.status),
    [taskId, wanted],
    { timeout, polling: 50 },
  );
  return row(page, taskId).getAttribute("data-status");
}

async function barOf(page, taskId) {
  const bar = row(page, taskId).locator("[role=progressbar]");
  return {
    now: Number(await bar.getAttribute("aria-valuenow")),
    min: await bar.getAttribute("aria-valuemin"),
    max: await bar.getAttribute("aria-valuemax"),
    label: await bar.getAttribute("aria-label"),
  };
}

async function httpSubmit(body, token = env("TASKGATE_TOKEN")) {
  const resp = await fetch(`${BASE}/api/tasks`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  check(resp.status === 202, `HTTP submit answered ${resp.status}`);
  return (await resp.json()).task_id;
}

/** Every text the `.phase` note of each row shows, in order, from now on. */
async function recordPhases(page) {
  await page.evaluate(() => {
    window.__phases = {};
    new MutationObserver((records) => {
      for (const r of records) {
        const row = r.target.closest?.("li.task") ?? r.target.parentElement?.closest("li.task");
        const phase = row?.querySelector(".phase");
        if (!phase || phase.hidden || !phase.textContent) continue;
        const list = (window.__phases[row.dataset.taskId] ??= []);
        if (list[list.length - 1] !== phase.textContent) list.push(phase.textContent);
      }
    }).observe(document.querySelector("#tasks"), {
      subtree: true,
      childList: true,
      characterData: true,
      attributes: true,
      attributeFilter: ["hidden", "data-status"],
    });
  });
}

const pad2 = (n) => String(n).padStart(2, "0");

// ---- scenarios ---------------------------------------------------------------------------

const scenarios = {
  /** demo.count from the page: its bar reaches 100 and COMPLETED; HTTP and other tabs show up. */
  async count({ context }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    // The token left the address bar and lives in this tab's sessionStorage.
    check(!page.url().includes("token="), `token still in the address bar: ${page.url()}`);
    const stored = await page.evaluate(() => sessionStorage.getItem("taskgate.token"));
    check(stored === env("TASKGATE_TOKEN"), "token not kept in sessionStorage");
    await recordBars(page);

    const taskId = await submitFromForm(page, "demo.count", { steps: 8, delay: 0.1, priority: 3 });
    check((await waitStatus(page, taskId, TERMINAL)) === "COMPLETED", "demo.count did not complete");
    const bar = await barOf(page, taskId);
    check(bar.now === 100 && bar.min === "0" && bar.max === "100", `bar at the end: ${JSON.stringify(bar)}`);
    check(bar.label?.includes("demo.count"), `bar has no accessible name: ${bar.label}`);
    const outcome = await row(page, taskId).locator(".outcome").textContent();
    check(outcome.includes('{"counted":8}'), `result not shown: ${outcome}`);
    check(await row(page, taskId).locator(".cancel").isHidden(), "cancel button still shown after the end");
    const elapsed = await row(page, taskId).locator(".elapsed").textContent();
    check(/^took /.test(elapsed), `elapsed: ${elapsed}`);
    const samples = await checkBarsNeverWentBack(page, taskId);
    check(samples.length >= 3, `too few bar updates seen: ${JSON.stringify(samples)}`);

    // A task submitted over HTTP shows up, live.
    const viaHttp = await httpSubmit({ task: "demo.count", input: { steps: 3, delay: 0.05 } });
    check(
      (await waitStatus(page, viaHttp, TERMINAL)) === "COMPLETED",
      "HTTP task did not complete on the page",
    );

    // So does one submitted from another tab.
    const other = await openPage(context);
    await waitConnected(other.page);
    const fromTab = await submitFromForm(other.page, "demo.count", { steps: 2, delay: 0.05 });
    check((await waitStatus(page, fromTab, TERMINAL)) === "COMPLETED", "other tab's task did not show up");
    await other.page.close();
    errors.push(...other.errors);

    // A reload keeps the session (token from sessionStorage) and shows the tasks again.
    await page.reload();
    await waitConnected(page);
    await waitStatus(page, taskId, "COMPLETED", 10_000);
    check((await barOf(page, taskId)).now === 100, "bar not full after reload");

    // The queues and workers panel loaded (or says it is unavailable).
    await page.waitForSelector('#cluster[data-loaded="true"]', { timeout: 10_000 });
    const panel = await page.locator("#cluster").textContent();
    check(/Queues/.test(panel) && /Workers/.test(panel), `panel: ${panel}`);
    return { errors, result: { taskId, samples: samples.length, panel: panel.replace(/\s+/g, " ").trim() } };
  },

  /** demo.flaky shows "retrying (attempt n of 6)" between attempts, then completes; a delayed
   * demo.count shows "due at HH:MM:SS" until it runs. */
  async retry({ context }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    await page.waitForFunction(() => window.taskgate.taskTypesLoaded, null, { timeout: 10_000 });
    await recordPhases(page);
    const flaky = await httpSubmit({ task: "demo.flaky", input: { fail_times: 2 } });
    check((await waitStatus(page, flaky, TERMINAL)) === "COMPLETED", "demo.flaky did not complete");
    const outcome = await row(page, flaky).locator(".outcome").textContent();
    check(outcome.includes('{"attempts":3}'), `result not shown: ${outcome}`);
    const phases = await page.evaluate((id) => window.__phases[id] ?? [], flaky);
    // Attempt 1 and 2 fail: RETRYING before attempt 2 and before attempt 3 (each wait is drawn
    // from 0 up, so a page may render only one of the two).
    const retrying = phases.filter((p) => p.startsWith("retrying"));
    check(retrying.length >= 1, `no retrying note shown: ${JSON.stringify(phases)}`);
    for (const p of retrying)
      check(/^retrying \(attempt [23] of 6\)$/.test(p), `retrying note: ${JSON.stringify(phases)}`);
    check(await row(page, flaky).locator(".phase").isHidden(), "phase note left on a completed task");

    const resp = await fetch(`${BASE}/api/tasks`, {
      method: "POST",
      headers: { Authorization: `Bearer ${env("TASKGATE_TOKEN")}`, "Content-Type": "application/json" },
      body: JSON.stringify({ task: "demo.count", input: { steps: 1, delay: 0 }, countdown: 2 }),
      signal: AbortSignal.timeout(10_000),
    });
    check(resp.status === 202, `delayed submit answered ${resp.status}`);
    const delayed = await resp.json();
    const at = new Date(delayed.eta * 1000);
    const due = `due at ${pad2(at.getHours())}:${pad2(at.getMinutes())}:${pad2(at.getSeconds())}`;
    await page.waitForFunction(
      ([id, text]) => document.querySelector(`li.task[data-task-id="${id}"] .phase`)?.textContent === text,
      [delayed.task_id, due],
      { timeout: 10_000, polling: 50 },
    );
    check(
      (await row(page, delayed.task_id).getAttribute("data-status")) === "PENDING",
      "a due note on a task that is not PENDING",
    );
    check((await waitStatus(page, delayed.task_id, TERMINAL)) === "COMPLETED", "delayed task did not run");
    check(await row(page, delayed.task_id).locator(".phase").isHidden(), "due note left after it ran");
    return { errors, result: { flaky, phases, due } };
  },

  /** demo.sleep cancelled from its row ends CANCELLED. */
  async cancel({ context }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    await recordBars(page);
    const taskId = await submitFromForm(page, "demo.sleep", { seconds: 30 });
    await waitStatus(page, taskId, "RUNNING", 30_000);
    const button = row(page, taskId).locator("button.cancel");
    check(await button.isVisible(), "no cancel button on a running task");
    await button.click();
    check(
      (await waitStatus(page, taskId, TERMINAL, 15_000)) === "CANCELLED",
      "demo.sleep did not end CANCELLED",
    );
    check(await button.isHidden(), "cancel button still shown");
    const bar = await barOf(page, taskId);
    check(bar.now < 100, `a cancelled sleep of 30 s has a full bar: ${bar.now}`);
    // A terminal status never changes again.
    await page.waitForTimeout(700);
    check(
      (await row(page, taskId).getAttribute("data-status")) === "CANCELLED",
      "status changed after CANCELLED",
    );
    await checkBarsNeverWentBack(page, taskId);
    return { errors, result: { taskId, percent: bar.now } };
  },

  /** demo.fail shows its error. */
  async fail({ context }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    const message = `kaboom ${Math.random().toString(36).slice(2, 8)}`;
    const taskId = await submitFromForm(page, "demo.fail", { message, after: 2 });
    check((await waitStatus(page, taskId, TERMINAL)) === "FAILED", "demo.fail did not end FAILED");
    const outcome = row(page, taskId).locator(".outcome");
    const text = await outcome.textContent();
    check(text === `DemoFailure: ${message}`, `error shown: ${text}`);
    check(await outcome.isVisible(), "error not visible");

    // Bad input is named next to the form, and nothing is submitted.
    const form = page.locator('form[data-task="demo.count"]');
    const before = await page.locator("li.task").count();
    await form.locator('[name="steps"]').fill("0");
    await form.locator("button[type=submit]").click();
    const status = form.locator("output");
    await page.waitForFunction((el) => el.classList.contains("error"), await status.elementHandle());
    const said = await status.textContent();
    check(/Steps: at least 1/.test(said), `no error next to the form: ${said}`);
    check((await page.locator("li.task").count()) === before, "a bad form was submitted");
    return { errors, result: { taskId, error: text, formError: said } };
  },

  /** The gateway dies mid-task and comes back on the same port: the bar still completes. */
  async restart({ context, restartGateway }) {
    const page = await context.newPage();
    const errors = watchConsole(page);
    // What the page sends over its websockets, to see it re-watch its task after the restart.
    const sent = [];
    page.on("websocket", (ws) => ws.on("framesent", (frame) => sent.push(String(frame.payload))));
    await page.goto(`${BASE}/?token=${encodeURIComponent(env("TASKGATE_TOKEN"))}`);
    await waitConnected(page);
    await recordBars(page);
    await page.evaluate(() => {
      window.__states = [];
      const conn = document.querySelector("#connection");
      new MutationObserver(() => {
        const s = conn.dataset.state;
        if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
      }).observe(conn, { attributes: true, attributeFilter: ["data-state"] });
    });
    const taskId = await submitFromForm(page, "demo.count", { steps: 30, delay: 0.2 });
    await page.waitForFunction(
      (id) =>
        Number(
          document
            .querySelector(`li.task[data-task-id="${id}"] [role=progressbar]`)
            ?.getAttribute("aria-valuenow"),
        ) >= 15,
      taskId,
      { timeout: 20_000, polling: 50 },
    );
    const before = await barOf(page, taskId);
    await restartGateway();
    await waitConnected(page, 30_000);
    const watch = sent
      .map((p) => /^42\d*\["watch",(.*)\]$/.exec(p))
      .filter(Boolean)
      .map((m) => JSON.parse(m[1]));
    check(watch.length >= 1, "the page did not send watch after the reconnect");
    const lastSeq = watch[watch.length - 1].tasks[taskId];
    check(
      Number.isInteger(lastSeq) && lastSeq >= 2,
      `watch did not carry the task's last seq: ${JSON.stringify(watch)}`,
    );
    check(
      (await waitStatus(page, taskId, TERMINAL, 40_000)) === "COMPLETED",
      "task did not complete after the restart",
    );
    check((await barOf(page, taskId)).now === 100, "bar not full after the restart");
    const states = await page.evaluate(() => window.__states);
    check(
      states.includes("reconnecting") || states.includes("offline"),
      `indicator never left connected: ${states}`,
    );
    check(states[states.length - 1] === "connected", `indicator ends ${states[states.length - 1]}`);
    const samples = await checkBarsNeverWentBack(page, taskId);
    // Everything except Chromium's notes about the refused connections while the gateway was down.
    const unexpected = errors.filter((e) => !NETWORK_ERROR.test(e));
    return {
      errors: unexpected,
      result: {
        taskId,
        before: before.now,
        watched: lastSeq,
        states,
        samples: samples.length,
        networkErrors: errors.length - unexpected.length,
      },
    };
  },

  /** An expired or bad token gives a clear message, not endless reconnects; a good one recovers. */
  async "bad-token"({ context }) {
    const errors = [];
    // Expired.
    const expired = await openPage(context, env("TASKGATE_EXPIRED_TOKEN"));
    await expired.page.waitForSelector("#notice:not([hidden])");
    const expiredText = await expired.page.locator("#notice .notice-text").textContent();
    check(/token expired/.test(expiredText), `expired token message: ${expiredText}`);
    check(
      (await expired.page.locator("#connection").getAttribute("data-state")) === "offline",
      "indicator not offline",
    );
    check(!expired.page.url().includes("token="), "expired token left in the address bar");
    await expired.page.close();
    errors.push(...expired.errors);

    // Signed with another secret: the gateway refuses it; the page stops instead of retrying.
    const page = await context.newPage();
    const pageErrors = watchConsole(page);
    let sockets = 0;
    page.on("websocket", () => (sockets += 1));
    await page.goto(`${BASE}/?token=${encodeURIComponent(env("TASKGATE_BAD_TOKEN"))}`);
    await page.waitForSelector("#notice:not([hidden])");
    const badText = await page.locator("#notice .notice-text").textContent();
    check(/invalid token/.test(badText), `bad token message: ${badText}`);
    await page.waitForTimeout(3000);
    check(sockets === 1, `the page opened ${sockets} websockets with a refused token`);
    check(
      (await page.locator("#connection").getAttribute("data-state")) === "offline",
      "indicator not offline",
    );
    check(
      (await page.evaluate(() => sessionStorage.getItem("taskgate.token"))) === null,
      "refused token kept",
    );

    // Pasting a good token connects.
    await page.locator("#token-input").fill(env("TASKGATE_TOKEN"));
    await page.locator("#token-form button[type=submit]").click();
    await waitConnected(page);
    check(await page.locator("#notice").isHidden(), "notice still shown once connected");
    return { errors: [...errors, ...pageErrors], result: { expired: expiredText, bad: badText, sockets } };
  },

  /** A screenshot of the page with bars in flight, for the README. */
  async screenshot({ context }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    const done = await submitFromForm(page, "demo.count", { steps: 4, delay: 0.05 });
    await waitStatus(page, done, "COMPLETED");
    const failed = await submitFromForm(page, "demo.fail", { message: "disk quota exceeded", after: 1 });
    await waitStatus(page, failed, "FAILED");
    const sleeper = await submitFromForm(page, "demo.sleep", { seconds: 20 });
    const counter = await submitFromForm(page, "demo.count", { steps: 40, delay: 0.15 });
    const primes = await submitFromForm(page, "demo.primes", { limit: 30000000 });
    await page.waitForFunction(
      (ids) =>
        ids.filter((id) => {
          const v = Number(
            document
              .querySelector(`li.task[data-task-id="${id}"] [role=progressbar]`)
              ?.getAttribute("aria-valuenow"),
          );
          return v > 10 && v < 90;
        }).length >= 2,
      [sleeper, counter],
      { timeout: 20_000, polling: 50 },
    );
    await page.waitForSelector('#cluster[data-loaded="true"]');
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: env("TASKGATE_SCREENSHOT") });
    // Leave the worker free for whoever comes next.
    await row(page, sleeper).locator("button.cancel").click();
    await waitStatus(page, sleeper, "CANCELLED", 15_000);
    await waitStatus(page, counter, TERMINAL, 30_000);
    await waitStatus(page, primes, TERMINAL, 60_000);
    return { errors, result: { path: env("TASKGATE_SCREENSHOT") } };
  },
};

// ---- runner ------------------------------------------------------------------------------

const lines = createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
lines.on("line", (line) => (waiting.length ? waiting.shift()(line) : pending.push(line)));
function nextLine() {
  return pending.length ? Promise.resolve(pending.shift()) : new Promise((resolve) => waiting.push(resolve));
}

async function restartGateway() {
  console.log("@@restart-gateway");
  const answer = await withTimeout(nextLine(), 30_000, "the gateway restart");
  check(answer.trim() === "restarted", `restart answer: ${answer}`);
}

const name = process.argv[2];
if (!(name in scenarios)) {
  console.error(`unknown scenario ${name}; one of: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
const browser = await launchBrowser();
let code = 1;
try {
  const { errors, result } = await withTimeout(
    scenarios[name]({ context: browser.context, restartGateway }),
    SCENARIO_TIMEOUT_MS,
    `scenario ${name}`,
  );
  check(errors.length === 0, `console errors:\n${errors.join("\n")}`);
  console.log(JSON.stringify({ ok: true, scenario: name, ...result }));
  code = 0;
} catch (err) {
  console.error(err?.stack || String(err));
} finally {
  await browser.close();
  lines.close();
}
process.exit(code);
