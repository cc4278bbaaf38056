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

/**
 * Runs an admin center flow: `fn(page)` on a 1280×900 page of a fresh headless Chromium, with
 * 30 s default waits (test & enable talks to real servers, and CI machines are busy). On an
 * error every open page is screenshotted as `FAILED-<name>-<n>` (`FAILED-<n>` without a name).
 * Exits the process: 0 on success, 1 on failure.
 */
export async function runAdminFlow(name, fn) {
  const browser = await launch();
  let failed = false;
  try {
    const page = await newPage(browser, { viewport: { width: 1280, height: 900 } });
    page.setDefaultTimeout(30_000);
    await fn(page);
  } catch {
    failed = true;
    const prefix = name ? `FAILED-${name}` : 'FAILED';
    for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
      await screenshot(p, `${prefix}-${i}`).catch(() => {});
    }
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
}

/** Signs in at `baseUrl` with the API token `token` and waits for the dashboard. */
export async function signIn(page, baseUrl, token) {
  if (baseUrl) await page.goto(`${baseUrl}/`);
  await page.getByLabel(/API token/).fill(token);
  await page.getByRole('button', { name: 'Sign in with the token' }).click();
  await page.getByRole('heading', { name: 'Sync dashboard' }).waitFor();
}

/** Opens the page of the mailbox `email` from the mailbox list. */
export async function openMailbox(page, email) {
  await page.getByRole('link', { name: 'Mailboxes' }).click();
  await page.getByRole('link', { name: email }).click();
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

/**
 * The Exchange flows' common middle (Exchange Server and Exchange Online): `profile` made the
 * default, email settings for email only (Exchange's appointments, contacts and tasks are not
 * synchronized yet: test and enable would refuse the mailbox), `mailbox` approved and given the
 * default email settings (whose own test & enable is let finish), then test & enable of
 * `mailbox` from the list, which must succeed.
 */
export async function exchangeTestEnable(page, profile, mailbox) {
  await step('make it the default profile', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('button', { name: `Make ${profile} the default profile` }).click();
    await notice(page, 'now the default');
  });
  await step('email settings: appointments, contacts and tasks not synchronized', async () => {
    await page.getByRole('link', { name: 'Email settings' }).click();
    await page.getByLabel('Appointments, contacts and tasks').selectOption('none');
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await notice(page, 'The email settings were saved.');
  });
  await step('approve the mailbox and apply the default email settings', async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await selectRow(page, mailbox);
    await page.getByRole('button', { name: 'Approve email' }).click();
    await notice(page, 'approved (1 mailbox(es))');
    await selectRow(page, mailbox);
    await page.getByRole('button', { name: 'Apply default email settings' }).click();
    await notice(page, 'default email settings were applied (1 mailbox(es))');
    // Applying the defaults queues a test & enable of its own: let it finish first.
    await page.getByRole('link', { name: 'Jobs' }).click();
    await jobDone(page);
    await page.getByRole('link', { name: 'Mailboxes' }).click();
  });
  await step('test & enable: the job succeeds', async () => {
    await selectRow(page, mailbox);
    await page.getByRole('button', { name: 'Test & enable mailboxes' }).click();
    await notice(page, 'Testing and enabling 1 mailbox(es)');
    const status = await jobDone(page);
    if (status !== 'succeeded') {
      const why = await page.locator('#jobs tbody tr:first-child .error').allTextContents();
      throw new Error(`the job ended ${status}: ${why.join(' | ')}`);
    }
  });
}

/**
 * An Exchange flow's failure: `profile`'s secret field `label` set to a wrong value, test &
 * enable of the profile's mailboxes, then `mailbox`'s page shows the authentication step
 * failing (with `text`, when given) and an error alert. Screenshot: `shot`.
 */
export async function exchangeWrongSecret(page, { profile, mailbox, label, text, shot }) {
  await page.getByRole('link', { name: 'Server profiles' }).click();
  await page.getByRole('link', { name: profile }).click();
  await page.getByLabel(label).fill('not-the-secret');
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await notice(page, 'The profile was saved.');
  await page.getByRole('button', { name: 'Test & enable mailboxes of this profile' }).click();
  const status = await jobDone(page);
  if (status === 'succeeded') throw new Error('the job succeeded with a wrong secret');
  await openMailbox(page, mailbox);
  const failure = page.locator('#last-error').filter({ hasText: 'Failed step: authentication' });
  await (text ? failure.filter({ hasText: text }) : failure).waitFor();
  await page.locator('#alert-wall').filter({ hasText: 'error' }).waitFor();
  await screenshot(page, shot);
}
