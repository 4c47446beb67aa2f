// Browser scenarios for the web page: Playwright (playwright-core) driving Debian's chromium
// against a real gateway and a real Celery worker. tests/web/test_web.py runs one scenario per
// call:
//
//   TASKGATE_URL=… TASKGATE_TOKEN=… node tests/web/browser/scenarios.mjs count
//
// The `restart` scenario asks its caller to restart the gateway: it prints `@@restart-gateway` on
// stdout and waits for a line `restarted` on stdin. Each scenario prints one JSON line on success.
import { createInterface } from "node:readline";
import { join } from "node:path";

import { check, env, launchBrowser, requireWeb, viewportFromEnv, withTimeout } from "./lib.mjs";

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

async function waitForms(page) {
  await page.waitForSelector('#forms[data-state="loaded"]', { timeout: 15_000 });
}

/** Fill a task's form, press Run, and return the id the ack gave. */
async function submitFromForm(page, task, values = {}) {
  await waitForms(page);
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

/** The page's widths: it must never scroll sideways. */
async function checkNoHorizontalScroll(page, when) {
  const m = await page.evaluate(() => {
    const doc = document.documentElement;
    const wide = [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > doc.clientWidth + 0.5)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}.${e.className}`);
    return { scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, wide };
  });
  check(
    m.scrollWidth <= m.clientWidth,
    `horizontal scroll ${when}: scrollWidth ${m.scrollWidth} > clientWidth ${m.clientWidth} (${m.wide.join(", ")})`,
  );
  return m;
}

/** From the first script on: every (connection state, panel state, panel text) the page shows. */
async function recordPanelAgainstHeader(page) {
  await page.addInitScript(() => {
    window.__panel = [];
    const note = () => {
      const conn = document.querySelector("#connection");
      const panel = document.querySelector("#cluster");
      if (!conn || !panel) return;
      const entry = {
        connection: conn.dataset.state,
        state: panel.dataset.state,
        text: panel.textContent.replace(/\s+/g, " ").trim(),
      };
      const last = window.__panel[window.__panel.length - 1];
      if (!last || last.connection !== entry.connection || last.text !== entry.text || last.state !== entry.state)
        window.__panel.push(entry);
    };
    document.addEventListener("DOMContentLoaded", () => {
      note();
      new MutationObserver(note).observe(document.body, {
        subtree: true,
        childList: true,
        characterData: true,
        attributes: true,
        attributeFilter: ["data-state"],
      });
    });
  });
}

/** The panel never says one thing while the header says another. */
async function checkPanelAgreesWithHeader(page) {
  const seen = await page.evaluate(() => window.__panel);
  check(seen.length > 0, "no panel states recorded");
  for (const e of seen) {
    if (e.connection === "connected")
      check(!/not connected|Unavailable/i.test(e.text), `panel contradicts "connected": ${JSON.stringify(e)}`);
    else
      check(
        e.state === "waiting" && !/busy|processed/.test(e.text),
        `panel shows data while the header says ${e.connection}: ${JSON.stringify(e)}`,
      );
  }
  return seen;
}

/** Run the axe-core checks in the page; any "serious" or "critical" violation fails. */
async function checkAccessibility(page, when) {
  const axePath = join(requireWeb.resolve("axe-core/package.json"), "..", "axe.min.js");
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, {
      runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] },
      resultTypes: ["violations"],
    });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => `${n.target.join(" ")}: ${n.failureSummary}`),
    }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `axe ${when}: ${JSON.stringify(bad, null, 1)}`);
  return result.map((v) => `${v.id} (${v.impact})`);
}

/** A few tasks of each kind in the list: completed, failed (long message), running. */
async function fillTaskList(page) {
  const done = await submitFromForm(page, "demo.count", { steps: 3, delay: 0.05 });
  await waitStatus(page, done, "COMPLETED");
  const failed = await submitFromForm(page, "demo.fail", {
    message: "disk quota exceeded on /var/lib/reports while writing the second part of the export",
    after: 1,
  });
  await waitStatus(page, failed, "FAILED");
  const sleeper = await submitFromForm(page, "demo.sleep", { seconds: 20 });
  await waitStatus(page, sleeper, "RUNNING");
  return { done, failed, sleeper };
}

async function cancelAndWait(page, taskId) {
  await row(page, taskId).locator("button.cancel").click();
  await waitStatus(page, taskId, TERMINAL, 15_000);
}

function nextFrames(page) {
  return page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r()))));
}

/** The element's box lies inside the viewport, whole. */
async function inViewport(locator) {
  return locator.evaluate((e) => {
    const r = e.getBoundingClientRect();
    return r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth;
  });
}

/** Lines a block of text takes (1 when it does not wrap). */
async function linesOf(locator) {
  return locator.evaluate((e) => {
    const lh = parseFloat(getComputedStyle(e).lineHeight) || parseFloat(getComputedStyle(e).fontSize) * 1.45;
    return Math.round(e.getBoundingClientRect().height / lh);
  });
}

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
  // A RUNNING task whose worker the test froze (SIGSTOP): the gateway's stall watch marks it,
  // and the page says so plainly on its row.
  async stall({ context }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    const id = env("TASKGATE_TASK_ID");
    await page.waitForFunction(
      (id) => document.querySelector(`li.task[data-task-id="${id}"]`)?.dataset.stalled === "true",
      id,
      { timeout: 30_000, polling: 50 },
    );
    const phase = await row(page, id).locator(".phase").textContent();
    const status = await row(page, id).getAttribute("data-status");
    return { errors, result: { phase, status } };
  },

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
    await recordPanelAgainstHeader(page);
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
    await checkPanelAgreesWithHeader(page);
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

  /** The page at this viewport (TASKGATE_VIEWPORT): no sideways scroll, nothing cut, the new
   * task in view after Run, long text fields whole, the header in one or two rows. */
  async layout({ context, viewport }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    await waitForms(page);
    const widths = { loaded: await checkNoHorizontalScroll(page, "once loaded") };

    // The status pill shows its whole text; brand, user and pill each stay on one line.
    const pill = page.locator("#connection");
    const pillBox = await pill.evaluate((e) => ({
      clipped: e.scrollWidth > e.clientWidth,
      right: e.getBoundingClientRect().right,
      text: e.textContent.trim(),
    }));
    check(!pillBox.clipped && pillBox.right <= viewport.width, `status pill cut: ${JSON.stringify(pillBox)}`);
    check(pillBox.text === "Connected", `pill says ${pillBox.text}`);
    for (const sel of ["#connection .label", ".brand h1", "#who"])
      check((await linesOf(page.locator(sel))) === 1, `${sel} wraps onto more lines`);
    const headerRows = await page.locator("header.top").evaluate((h) => {
      const tops = new Set([...h.children].filter((c) => !c.hidden).map((c) => Math.round(c.getBoundingClientRect().top / 8)));
      return tops.size;
    });
    check(headerRows <= 2, `header in ${headerRows} rows`);

    // On a narrow screen the task list comes before the forms.
    const order = await page.evaluate(() => ({
      tasks: document.querySelector(".tasks-card").getBoundingClientRect().top,
      run: document.querySelector(".run").getBoundingClientRect().top,
      tasksLeft: document.querySelector(".tasks-card").getBoundingClientRect().left,
      runRight: document.querySelector(".run").getBoundingClientRect().right,
    }));
    if (viewport.width < 900) check(order.tasks < order.run, `task list below the forms: ${JSON.stringify(order)}`);
    else check(order.tasksLeft >= order.runRight, `task list not beside the forms: ${JSON.stringify(order)}`);

    // demo.fail's message: a multi-line field the width of its form, its text never cut.
    const form = page.locator('form[data-task="demo.fail"]');
    const message = form.locator('[name="message"]');
    check((await message.evaluate((e) => e.tagName)) === "TEXTAREA", "message is not a textarea");
    const long = "the export of the quarterly report failed because the disk is full: ".repeat(2).trim();
    await message.fill(long);
    const fit = await message.evaluate((e) => {
      const formBox = e.closest("form").getBoundingClientRect();
      const box = e.getBoundingClientRect();
      return { wide: box.width / formBox.width, overflow: e.scrollWidth > e.clientWidth, height: e.scrollHeight - e.clientHeight };
    });
    check(fit.wide > 0.85 && !fit.overflow, `message field cuts its text: ${JSON.stringify(fit)}`);

    // Run from the last form: the new task's row comes into view.
    await page.locator(".task-form").last().scrollIntoViewIfNeeded();
    const taskId = await submitFromForm(page, "demo.fail", { message: long, after: 1 });
    await page.waitForFunction((id) => document.querySelector(`li.task[data-task-id="${id}"]`), taskId);
    await nextFrames(page); // the ack's render, after the row (the first event may come before it)
    const where = () => row(page, taskId).evaluate((e) => JSON.stringify({ top: e.getBoundingClientRect().top, scrollY }));
    check(await inViewport(row(page, taskId).locator(".task-head")), `the new task is out of view after Run: ${await where()}`);
    check((await waitStatus(page, taskId, TERMINAL)) === "FAILED", "demo.fail did not fail");
    await nextFrames(page);
    // Grown by its message and error, it is still in view.
    check(await inViewport(row(page, taskId)), `the new task left the view as it grew: ${await where()}`);
    const outcome = row(page, taskId).locator(".outcome");
    check((await outcome.textContent()) === `DemoFailure: ${long}`, "error text not shown whole");
    widths.failed = await checkNoHorizontalScroll(page, "with a long error in the list");

    const { sleeper } = await fillTaskList(page);
    widths.busy = await checkNoHorizontalScroll(page, "with tasks in flight");
    await cancelAndWait(page, sleeper);

    // At the narrowest width supported, too.
    await page.setViewportSize({ width: 360, height: viewport.height });
    widths.at360 = await checkNoHorizontalScroll(page, "at 360 px");
    for (const sel of ["#connection .label", ".brand h1"])
      check((await linesOf(page.locator(sel))) === 1, `${sel} wraps at 360 px`);
    return { errors, result: { viewport, widths, headerRows } };
  },

  /** Every task type gets a form built from its schema; demo.report's list, group, enum and
   * boolean work; bad values are named at the field, client-side and from the server's 422. */
  async "schema-forms"({ context }) {
    const { page, errors } = await openPage(context);
    const sent = [];
    page.on("websocket", (ws) => ws.on("framesent", (frame) => sent.push(String(frame.payload))));
    await waitConnected(page);
    await waitForms(page);
    const resp = await fetch(`${BASE}/api/task-types`, {
      headers: { Authorization: `Bearer ${env("TASKGATE_TOKEN")}` },
      signal: AbortSignal.timeout(10_000),
    });
    const types = (await resp.json()).task_types;
    const names = types.map((t) => t.name).sort();
    const forms = await page.locator(".task-form").evaluateAll((fs) => fs.map((f) => f.dataset.task));
    check(JSON.stringify(forms) === JSON.stringify(names), `forms ${forms} for task types ${names}`);
    for (const needed of ["demo.report", "demo.add", "demo.ray_primes"]) check(forms.includes(needed), `no form for ${needed}`);
    // A queue choice where the type allows more than one queue.
    for (const t of types) {
      const select = page.locator(`form[data-task="${t.name}"] select[name="queue"]`);
      check((await select.count()) === (t.queues.length > 1 ? 1 : 0), `queue choice of ${t.name}`);
      if (t.queues.length > 1) {
        const options = await select.locator("option").evaluateAll((os) => os.map((o) => o.value));
        check(JSON.stringify(options) === JSON.stringify(t.queues), `queues of ${t.name}: ${options}`);
      }
    }
    // Inputs fit the schema: bounds, step, defaults.
    const steps = page.locator('form[data-task="demo.count"] [name="steps"]');
    const attrs = await steps.evaluate((e) => [e.type, e.min, e.max, e.step, e.value]);
    check(JSON.stringify(attrs) === JSON.stringify(["number", "1", "10000", "1", "10"]), `steps: ${attrs}`);

    const form = page.locator('form[data-task="demo.report"]');
    const report = types.find((t) => t.name === "demo.report");
    const shape = await form.evaluate((f) => ({
      group: f.querySelector('fieldset[data-field="input.options"] > legend')?.textContent,
      format: [...f.querySelectorAll('select[name="options.format"] option')].map((o) => o.textContent),
      header: f.querySelector('input[type=checkbox][name="options.header"]')?.checked,
      items: f.querySelectorAll('[data-field="input.columns"] [data-item]').length,
    }));
    check(shape.group === "Options", `nested group: ${JSON.stringify(shape)}`);
    const formats = report.input_schema.properties.options.properties.format.enum;
    check(shape.format.filter((t) => t !== "–").join() === formats.join(), `enum select: ${JSON.stringify(shape)}`);
    check(shape.header === true, "the boolean's default (true) is not pre-filled");
    check(shape.items === 1, `columns starts with ${shape.items} items (minItems 1)`);

    // The list control: add up to maxItems, remove down to minItems.
    const list = form.locator('[data-field="input.columns"]');
    const add = list.locator("button.add");
    const removeFirst = list.locator("button.remove").first();
    check(await removeFirst.isDisabled(), "the only item can be removed below minItems");
    for (let i = 1; i < 20; i++) await add.click();
    check((await list.locator("[data-item]").count()) === 20, "not 20 items");
    check(await add.isDisabled(), "Add still enabled at maxItems");
    while ((await list.locator("[data-item]").count()) > 2) await list.locator("button.remove").last().click();
    check(!(await add.isDisabled()), "Add disabled below maxItems");

    // Client-side: an empty column and rows 0 are named at their fields; nothing is sent.
    const submits = () => sent.filter((p) => /^42\d*\["submit"/.test(p)).length;
    const before = submits();
    await form.locator('[name="rows"]').fill("0");
    await list.locator("[data-item]").nth(0).fill("id");
    await list.locator("[data-item]").nth(1).fill("");
    await form.locator("button[type=submit]").click();
    const fieldError = (field) =>
      form.locator(`[data-field="${field}"] .field-error`).last().textContent();
    await page.waitForFunction((f) => f.querySelector("output").classList.contains("error"), await form.elementHandle());
    const client = { rows: await fieldError("input.rows"), column: await fieldError("input.columns[1]") };
    check(client.rows === "at least 1" && client.column === "required", `client errors: ${JSON.stringify(client)}`);
    check(
      (await form.locator('[name="rows"]').getAttribute("aria-invalid")) === "true",
      "bad field not marked aria-invalid",
    );
    check(submits() === before, "a form the schema refuses was sent");

    // Server-side: a format the page is made to allow (the server's schema does not) comes
    // back as a 422 naming input.options.format, shown at that field.
    await form.locator('[name="rows"]').fill("5");
    await list.locator("[data-item]").nth(1).fill("name");
    await form.evaluate((f) => {
      const format = f._model.root.fields.find((n) => n.key === "options").fields.find((n) => n.key === "format");
      format.options.push("xml");
      const select = f.querySelector('select[name="options.format"]');
      const option = document.createElement("option");
      option.value = String(format.options.length - 1);
      option.textContent = "xml";
      select.append(option);
      select.value = option.value;
    });
    await form.locator("button[type=submit]").click();
    await page.waitForFunction(
      (f) => !f.querySelector('[data-field="input.options.format"] .field-error').hidden,
      await form.elementHandle(),
      { timeout: 10_000 },
    );
    const server = await fieldError("input.options.format");
    check(submits() === before + 1, "the 422 did not come from a submit");
    check(server.length > 0, "no server message at the field");
    const said = await form.locator("output").textContent();
    check(/^Format: /.test(said), `form status after the 422: ${said}`);

    // And a good one runs to COMPLETED.
    await form.evaluate((f) => (f.querySelector('select[name="options.format"]').value = "0"));
    const reportId = await submitFromForm(page, "demo.report", { rows: 20 });
    check(
      (await form.locator('[data-field="input.options.format"] .field-error').isHidden()),
      "the old 422 message stayed",
    );
    check((await waitStatus(page, reportId, TERMINAL)) === "COMPLETED", "demo.report did not complete");
    const addId = await submitFromForm(page, "demo.add", { value: 2.5 });
    check((await waitStatus(page, addId, TERMINAL)) === "COMPLETED", "demo.add did not complete");
    const addOut = await row(page, addId).locator(".outcome").textContent();
    check(addOut.includes('"total":2.5'), `demo.add result: ${addOut}`);
    // A queue picked in the form is the task's queue.
    const heavy = await submitFromForm(page, "demo.count", { steps: 1, delay: 0, queue: "heavy" });
    check((await waitStatus(page, heavy, TERMINAL)) === "COMPLETED", "demo.count on heavy did not complete");
    check((await row(page, heavy).locator(".task-queue").textContent()) === "heavy", "queue not heavy");
    return { errors, result: { forms, client, server, report: reportId } };
  },

  /** The panel agrees with the header from the first paint on; a worker's busy count drops
   * once a task ends. */
  async panel({ context }) {
    const page = await context.newPage();
    const errors = watchConsole(page);
    await recordPanelAgainstHeader(page);
    await page.goto(`${BASE}/?token=${encodeURIComponent(env("TASKGATE_TOKEN"))}`);
    await waitConnected(page);
    await page.waitForSelector('#cluster[data-state="loaded"]', { timeout: 20_000 });
    // Long enough to be seen busy (Celery's inspect takes seconds); cancelled once it is.
    const taskId = await submitFromForm(page, "demo.sleep", { seconds: 60 });
    await waitStatus(page, taskId, "RUNNING");
    const busyWith = (id) =>
      page.evaluate((tid) => [...document.querySelectorAll("#cluster li.worker")].some((w) => w.dataset.busy.split(" ").includes(tid)), id);
    await page.waitForFunction(
      (id) => [...document.querySelectorAll("#cluster li.worker")].some((w) => w.dataset.busy.split(" ").includes(id)),
      taskId,
      { timeout: 20_000, polling: 50 },
    );
    const during = await page.locator("#cluster").textContent();
    check(/[1-9]\d* of \d+ busy/.test(during), `panel while running: ${during}`);
    await row(page, taskId).locator("button.cancel").click();
    await waitStatus(page, taskId, "CANCELLED", 15_000);
    await nextFrames(page);
    check(!(await busyWith(taskId)), "the ended task still counts as busy");
    // The next answer of the gateway too.
    const renders = await page.evaluate(() => window.taskgate.clusterRenders);
    await page.waitForFunction(
      (n) => window.taskgate.clusterRenders > n + 1 && document.querySelector("#cluster").dataset.state === "loaded",
      renders,
      { timeout: 20_000, polling: 100 },
    );
    check(!(await busyWith(taskId)), "the ended task counts as busy after a refresh");
    const seen = await checkPanelAgreesWithHeader(page);
    return { errors, result: { taskId, states: seen.length, panel: seen.at(-1) } };
  },

  /** A workflow shows its roll-up (kind, percent, tasks done) and its tasks say they belong. */
  async workflow({ context }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    const resp = await fetch(`${BASE}/api/workflows`, {
      method: "POST",
      headers: { Authorization: `Bearer ${env("TASKGATE_TOKEN")}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        chain: [
          { task: "demo.add", input: { value: 1 } },
          { task: "demo.add", input: { value: 2 } },
        ],
      }),
      signal: AbortSignal.timeout(10_000),
    });
    check(resp.status === 202, `workflow submit answered ${resp.status}`);
    const { workflow_id: wid, task_ids: ids } = await resp.json();
    const flow = page.locator(`li.workflow[data-workflow-id="${wid}"]`);
    await page.waitForFunction(
      (id) => document.querySelector(`li.workflow[data-workflow-id="${id}"]`)?.dataset.status === "COMPLETED",
      wid,
      { timeout: 30_000, polling: 50 },
    );
    const line = await flow.locator(".flow-line").textContent();
    check(line === "100% · chain · 2 of 2 tasks done", `roll-up: ${line}`);
    check((await flow.locator("[role=progressbar]").getAttribute("aria-valuenow")) === "100", "roll-up bar");
    for (const id of ids) {
      await waitStatus(page, id, "COMPLETED");
      const tag = await row(page, id).locator(".task-flow").textContent();
      check(tag === `in chain ${wid.slice(0, 8)}`, `task tag: ${tag}`);
    }
    // After a reload the roll-up is fetched again (no workflow event comes for an ended one).
    await page.reload();
    await waitConnected(page);
    await page.waitForFunction(
      (id) => document.querySelector(`li.workflow[data-workflow-id="${id}"]`)?.dataset.status === "COMPLETED",
      wid,
      { timeout: 15_000 },
    );
    return { errors, result: { wid, line } };
  },

  /** axe-core on the page, with tasks of each kind and a form error shown. */
  async a11y({ context, viewport }) {
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    await waitForms(page);
    const found = { empty: await checkAccessibility(page, "on the empty page") };
    const { sleeper } = await fillTaskList(page);
    const form = page.locator('form[data-task="demo.report"]');
    await form.locator('[name="rows"]').fill("0");
    await form.locator("button[type=submit]").click();
    await page.waitForSelector('form[data-task="demo.report"] output.error');
    found.busy = await checkAccessibility(page, "with tasks and a form error");
    await cancelAndWait(page, sleeper);
    return { errors, result: { viewport, notSerious: found } };
  },

  /** Screenshots of the page with bars in flight, for the README, at 390 and 1280 px. */
  async screenshot({ context }) {
    const dir = env("TASKGATE_SCREENSHOT_DIR");
    const { page, errors } = await openPage(context);
    await waitConnected(page);
    const done = await submitFromForm(page, "demo.count", { steps: 4, delay: 0.05 });
    await waitStatus(page, done, "COMPLETED");
    const failed = await submitFromForm(page, "demo.fail", { message: "disk quota exceeded", after: 1 });
    await waitStatus(page, failed, "FAILED");
    const sleeper = await submitFromForm(page, "demo.sleep", { seconds: 30 });
    const counter = await submitFromForm(page, "demo.count", { steps: 60, delay: 0.15 });
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
    await page.waitForSelector('#cluster[data-loaded="true"]', { timeout: 20_000 });
    const paths = [];
    for (const [width, height] of [
      [390, 844],
      [1280, 800],
    ]) {
      await page.setViewportSize({ width, height });
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      await checkNoHorizontalScroll(page, `in the ${width} px screenshot`);
      const path = join(dir, `screenshot-${width}.png`);
      await page.screenshot({ path });
      paths.push(path);
    }
    // Leave the worker free for whoever comes next.
    await cancelAndWait(page, sleeper);
    await waitStatus(page, counter, TERMINAL, 30_000);
    await waitStatus(page, primes, TERMINAL, 60_000);
    return { errors, result: { paths } };
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
const viewport = viewportFromEnv();
const browser = await launchBrowser({ viewport });
let code = 1;
try {
  const { errors, result } = await withTimeout(
    scenarios[name]({ context: browser.context, restartGateway, viewport }),
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
