// Shared by the JS test scripts: packages from web/node_modules, the launch of Debian's chromium,
// and small assertion helpers. Every wait here has a timeout.
import { createRequire } from "node:module";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const WEB_DIR = new URL("../../../web/", import.meta.url).pathname;
// The packages are installed in web/ (npm ci); resolve them from there.
export const requireWeb = createRequire(join(WEB_DIR, "package.json"));

export const CHROMIUM = process.env.TASKGATE_CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

/** The viewport a scenario runs at: TASKGATE_VIEWPORT="390x844", else 1280x860. */
export function viewportFromEnv() {
  const m = /^(\d+)x(\d+)$/.exec(process.env.TASKGATE_VIEWPORT ?? "");
  return m ? { width: Number(m[1]), height: Number(m[2]) } : { width: 1280, height: 860 };
}

/** A fresh chromium profile in a temp dir; `close()` removes it. */
export async function launchBrowser({ viewport = { width: 1280, height: 860 } } = {}) {
  if (!existsSync(CHROMIUM)) throw new Error(`chromium not found at ${CHROMIUM} (apt-get install chromium)`);
  const { chromium } = requireWeb("playwright-core");
  const profile = mkdtempSync(join(tmpdir(), "taskgate-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    timeout: 30_000,
  });
  context.setDefaultTimeout(15_000);
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
