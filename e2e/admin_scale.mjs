// issue 20's "Must show" in headless Chromium, against a `serversync serve` holding thousands
// of tracked messages (started by crates/cli/tests/web_ui.rs, which passes BASE_URL, TOKEN,
// MAILBOX, HISTORY and LIVE — how many messages of history and how many live arrivals —,
// CONTACT, LIVE_SUBJECT (how the live arrivals' subjects begin), WAITING_SUBJECT, WAITING_REASON,
// FAILED_SUBJECT, FAILED_REPLY, and LONG_SUBJECT, part of a subject without a place to break that
// LONG_SUBJECTS messages have).
//
// The dashboard's latency in human units counting only the live arrivals; the mailbox page
// under two screens; a click from an item to its activity, back to the item and on to the
// sender's record; the outgoing queue's waiting email with its reason and the refused one with
// the server's reply. No page scrolls sideways. Screenshots: scale-*.png in $SCREENSHOTS.

import { openMailbox, runAdminFlow, screenshot, signIn, step } from './lib.mjs';

const {
  BASE_URL,
  TOKEN,
  MAILBOX,
  HISTORY,
  LIVE,
  CONTACT,
  LIVE_SUBJECT,
  WAITING_SUBJECT,
  WAITING_REASON,
  FAILED_SUBJECT,
  FAILED_REPLY,
  LONG_SUBJECT,
  LONG_SUBJECTS,
} = process.env;

/** Throws unless the page fits the window's width and the navigation reaches its bottom. */
async function fitsTheWindow(page, what) {
  const m = await page.evaluate(() => {
    window.scrollTo(0, document.documentElement.scrollHeight);
    const nav = document.querySelector('nav.side')?.getBoundingClientRect();
    return {
      scrollWidth: document.documentElement.scrollWidth,
      width: window.innerWidth,
      navBottom: nav ? nav.bottom : null,
      height: window.innerHeight,
    };
  });
  await page.evaluate(() => window.scrollTo(0, 0));
  if (m.scrollWidth > m.width) {
    throw new Error(`${what} is ${m.scrollWidth} px wide in a ${m.width} px window`);
  }
  if (m.navBottom !== null && m.navBottom < m.height) {
    throw new Error(`${what}: the navigation ends at ${m.navBottom} px of ${m.height}`);
  }
}

/** The text of the cell after the row header `th` in `scope`. */
async function cellAfter(scope, th) {
  return (await scope.locator('tr', { has: scope.page().getByRole('rowheader', { name: th, exact: true }) }).locator('td').textContent()).trim();
}

await runAdminFlow('scale', async (page) => {
  let live; // the subject of the newest item
  await step('sign in', () => signIn(page, BASE_URL, TOKEN));
  await step('the dashboard: latency of the live arrivals only, in human units', async () => {
    const latency = page.locator('section[aria-labelledby="h-latency"]');
    const messages = await cellAfter(latency, 'Messages');
    if (messages !== LIVE) throw new Error(`the latency counts ${messages} messages, not the ${LIVE} live ones`);
    for (const p of ['p50', 'p95', 'p99']) {
      const shown = await cellAfter(latency, p);
      const m = /^(\d+(?:\.\d)?) (ms|s|min)$/.exec(shown);
      if (!m) throw new Error(`${p} reads ${JSON.stringify(shown)}, not a duration under an hour`);
      const ms = Number(m[1]) * { ms: 1, s: 1000, min: 60_000 }[m[2]];
      if (ms > 5 * 60_000) throw new Error(`${p} is ${shown}: not a live arrival's latency`);
    }
    await latency
      .locator('#backfill')
      .filter({ hasText: `${Number(HISTORY).toLocaleString("en-US")} older messages taken in by a first synchronization are not counted` })
      .waitFor();
    await fitsTheWindow(page, 'the dashboard');
    await screenshot(page, 'scale-dashboard');
  });
  await step('the mailbox page: 25 items, newest first, under two screens', async () => {
    await openMailbox(page, MAILBOX);
    const rows = page.locator('#items-table tbody tr');
    await rows.first().waitFor();
    const n = await rows.count();
    if (n !== 25) throw new Error(`${n} items on the page, not 25`);
    // The live arrivals were taken in last (in the order Dovecot gave them UIDs).
    live = (await rows.first().locator('td').nth(2).textContent()).trim();
    if (!live.startsWith(LIVE_SUBJECT)) throw new Error(`the newest item is ${JSON.stringify(live)}, not a live arrival`);
    const { height, screen } = await page.evaluate(() => ({
      height: document.documentElement.scrollHeight,
      screen: window.innerHeight,
    }));
    if (height >= 2 * screen) throw new Error(`the mailbox page is ${height} px high, a screen is ${screen} px`);
    await page.getByRole('link', { name: 'Older items' }).waitFor();
    await fitsTheWindow(page, 'the mailbox page');
    await screenshot(page, 'scale-mailbox');
  });
  await step('an item leads to its activity', async () => {
    await page.locator('#items-table').getByRole('link', { name: live, exact: true }).click();
    await page.getByRole('heading', { name: `Email “${live}”` }).waitFor();
    await fitsTheWindow(page, 'the activity page');
    await screenshot(page, 'scale-activity');
  });
  await step('the activity leads back to the item', async () => {
    const activity = page.url();
    await page.locator('#activity-items tbody tr').first().getByRole('link').first().click();
    await page.locator('#trace li').first().waitFor();
    const back = page.locator('#item-activity');
    if ((await back.textContent()).trim() !== `“${live}”`) throw new Error('the item names another activity');
    await fitsTheWindow(page, 'the item page');
    await screenshot(page, 'scale-item');
    await back.click();
    await page.waitForURL(activity);
  });
  await step("the activity leads to the sender's record", async () => {
    await page.locator('#parties tr', { hasText: 'from' }).getByRole('link', { name: CONTACT }).click();
    await page.getByRole('heading', { name: `Contact ${CONTACT}` }).waitFor();
    await page.getByRole('link', { name: live, exact: true }).waitFor();
    await fitsTheWindow(page, 'the record page');
    await screenshot(page, 'scale-record');
  });
  await step('the email activities, 25 a page', async () => {
    await page.getByRole('link', { name: 'Email activities' }).click();
    const rows = page.locator('table.activities tbody tr');
    await rows.first().waitFor();
    const n = await rows.count();
    if (n !== 25) throw new Error(`${n} activities on the page, not 25`);
    await page.getByRole('link', { name: 'Older', exact: true }).waitFor();
    await fitsTheWindow(page, 'the activities page');
    await screenshot(page, 'scale-activities');
  });
  await step('a subject without a place to break keeps the pages in the window', async () => {
    await page.getByLabel('Subject').fill(LONG_SUBJECT);
    await page.getByRole('button', { name: 'Search' }).click();
    const rows = page.locator('table.activities tbody tr');
    await rows.filter({ hasText: LONG_SUBJECT }).first().waitFor();
    const n = await rows.count();
    if (n !== Number(LONG_SUBJECTS)) throw new Error(`${n} activities found, not ${LONG_SUBJECTS}`);
    await fitsTheWindow(page, 'the activities found');
    await rows.first().getByRole('link').first().click();
    await page.getByRole('heading', { name: LONG_SUBJECT }).waitFor();
    await fitsTheWindow(page, 'the activity with a long subject');
  });
  await step("the outgoing queue: a waiting email's reason and a refused one's reply", async () => {
    await page.getByRole('link', { name: 'Outgoing queue' }).click();
    await page.locator('#pending tr', { hasText: WAITING_SUBJECT }).filter({ hasText: WAITING_REASON }).waitFor();
    await page.locator('#failed tr', { hasText: FAILED_SUBJECT }).filter({ hasText: FAILED_REPLY }).waitFor();
    await page
      .locator('#failed')
      .getByRole('button', { name: `Send “${FAILED_SUBJECT}” again` })
      .waitFor();
    await fitsTheWindow(page, 'the outgoing queue');
    await screenshot(page, 'scale-outgoing');
  });
});
