// The page of an installed taskgate, in Debian's chromium: it connects, builds its forms from
// /api/task-types, runs demo.count from its form to COMPLETED, and does not scroll sideways.
// Usage: node page_check.mjs URL_WITH_TOKEN (from web/, where playwright-core is installed).
// Prints one JSON line: {"connected", "status", "percent", "overflow", "forms", "errors"}.
import { launchBrowser, check, withTimeout } from "../web/browser/lib.mjs";

const link = process.argv[2];
check(link, "usage: node page_check.mjs URL");

const browser = await launchBrowser({ viewport: { width: 390, height: 844 } });
const result = { connected: false, status: null, percent: null, overflow: null, forms: [], errors: [] };
try {
  await withTimeout(
    (async () => {
      const page = await browser.context.newPage();
      page.on("pageerror", (err) => result.errors.push(String(err)));
      page.on("console", (msg) => msg.type() === "error" && result.errors.push(msg.text()));
      await page.goto(link);
      await page.waitForSelector('#connection[data-state="connected"]', { timeout: 20_000 });
      result.connected = true;
      await page.waitForSelector('#forms[data-state="loaded"]', { timeout: 20_000 });
      result.forms = await page.$$eval("form[data-task]", (forms) => forms.map((f) => f.dataset.task));
      const form = page.locator('form[data-task="demo.count"]');
      await form.locator('[name="steps"]').fill("3");
      const out = form.locator("output");
      await form.locator("button[type=submit]").click();
      await page.waitForFunction(
        (el) => el.dataset.taskId || el.classList.contains("error"),
        await out.elementHandle(),
        { timeout: 15_000 },
      );
      const taskId = await out.getAttribute("data-task-id");
      check(taskId, `the form's submit failed: ${await out.textContent()}`);
      await page.waitForFunction(
        (id) => document.querySelector(`li.task[data-task-id="${id}"]`)?.dataset.status === "COMPLETED",
        taskId,
        { timeout: 30_000, polling: 100 },
      );
      const row = page.locator(`li.task[data-task-id="${taskId}"]`);
      result.status = await row.getAttribute("data-status");
      result.percent = Number(await row.locator("[role=progressbar]").getAttribute("aria-valuenow"));
      result.overflow = await page.evaluate(
        () => document.documentElement.scrollWidth > document.documentElement.clientWidth,
      );
    })(),
    90_000,
    "the installed page's check",
  );
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
