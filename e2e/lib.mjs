// Shared helpers of the browser tests: Debian's Chromium driven by playwright-core.
//
// Scripts are run by `serversync_testkit::browser::run_script` (cwd = e2e/), which sets
// CHROMIUM (the browser), SCREENSHOTS (where PNGs go) and TMPDIR (a directory of that run,
// where Playwright puts the browser's throwaway profile). By hand:
//   cd e2e && CHROMIUM=/usr/bin/chromium SCREENSHOTS=/tmp/shots node smoke.mjs
//
// Output protocol, read by the Rust side: one `STEP <name> ok (<ms> ms)` or
// `STEP <name> FAILED: <message>` line per step; the exit status is 0 only when all passed.

import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** Flags from shared/STACK.md (the user data dir is Playwright's own fresh one, see launch). */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** Bound of every wait (launch, navigation, locator waits) unless a call gives its own. */
export const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Starts headless Chromium. `chromium.launch` creates a fresh temporary user data dir under
 * TMPDIR for each launch and deletes it on `browser.close()` (passing `--user-data-dir` in
 * args is refused by Playwright; `launchPersistentContext(dir)` is the variant that takes one).
 */
export async function launch(options = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
    timeout: 30_000,
    ...options,
  });
}

/** A new page in a fresh context of `browser`, with bounded default timeouts. */
export async function newPage(browser, contextOptions = {}) {
  const context = await browser.newContext(contextOptions);
  context.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(DEFAULT_TIMEOUT_MS);
  return context.newPage();
}

/** Runs one named step; logs `STEP name ok (N ms)` or `STEP name FAILED: message` and rethrows. */
export async function step(name, fn) {
  const started = performance.now();
  try {
    const value = await fn();
    console.log(`STEP ${name} ok (${Math.round(performance.now() - started)} ms)`);
    return value;
  } catch (e) {
    const message = String(e?.message ?? e).split('\n')[0];
    console.log(`STEP ${name} FAILED: ${message}`);
    throw e;
  }
}

/** Directory for screenshots: $SCREENSHOTS, else a folder under the temp dir. */
export function screenshotDir() {
  const dir = process.env.SCREENSHOTS || join(tmpdir(), 'serversync-e2e-screenshots');
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Writes a full-page PNG to `${SCREENSHOTS}/${name}.png` and returns its path. */
export async function screenshot(page, name) {
  const path = join(screenshotDir(), `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`SCREENSHOT ${path}`);
  return path;
}

/**
 * Waits (bounded) until an element matching `selector` is visible and its text contains
 * `text` (case-sensitive substring of textContent); the error names what was there instead.
 */
export async function assertText(page, selector, text, { timeout = DEFAULT_TIMEOUT_MS } = {}) {
  // A RegExp hasText matches the raw text, case-sensitively (a string would match loosely).
  const exact = new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  try {
    await page.locator(selector, { hasText: exact }).first().waitFor({ state: 'visible', timeout });
    return;
  } catch (e) {
    if (e?.name !== 'TimeoutError') throw e;
  }
  const actual = await page.locator(selector).first().textContent({ timeout: 1_000 }).catch(() => null);
  throw new Error(
    `expected ${selector} to contain ${JSON.stringify(text)} within ${timeout} ms, ` +
      (actual === null ? 'no such element' : `found ${JSON.stringify(actual.trim())}`),
  );
}

/** Waits (bounded) until `selector` matches a visible element. */
export async function assertVisible(page, selector, { timeout = DEFAULT_TIMEOUT_MS } = {}) {
  await page.locator(selector).first().waitFor({ state: 'visible', timeout });
}

/**
 * Runs `fn({ browser, page })` with a launched browser and one page, then closes the browser.
 * On failure it saves a `FAILED-<n>.png` of every open page, prints the error and sets exit
 * status 1.
 */
export async function withBrowser(fn) {
  let browser;
  try {
    browser = await step('launch chromium', () => launch());
    const page = await newPage(browser);
    await fn({ browser, page });
  } catch (e) {
    process.exitCode = 1;
    console.error(e?.stack ?? String(e));
    if (browser) {
      const pages = browser.contexts().flatMap((c) => c.pages());
      for (const [i, p] of pages.entries()) {
        await screenshot(p, `FAILED-${i}`).catch(() => {});
      }
    }
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
}

/** Waits for the page's status notice containing `text` (the flash after an action). */
export async function notice(page, text) {
  await page.getByRole('status').filter({ hasText: text }).waitFor();
}

/** Ticks the list row of `email`. */
export async function selectRow(page, email) {
  await page.getByLabel(`Select ${email}`).check();
}

/**
 * Waits until the newest job on the jobs page is finished and returns its status. htmx
 * replaces the table every second while a job runs, so the cell is looked up each time.
 */
export async function jobDone(page) {
  const newest = '#jobs tbody tr:first-child .job-status';
  await page.waitForFunction(
    (sel) => {
      const el = document.querySelector(sel);
      return el && !['queued', 'running'].includes(el.textContent.trim());
    },
    newest,
    { timeout: 60_000, polling: 250 },
  );
  return (await page.locator(newest).textContent()).trim();
}
