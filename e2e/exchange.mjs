// The admin center's Exchange Server flow in headless Chromium, against a real
// `serversync serve` and the Exchange test double (started by crates/cli/tests/web_ui.rs,
// which passes BASE_URL, TOKEN, MAILBOX — a user's address on the double, found through
// Autodiscover — SERVICE and SERVICE_PASSWORD — the service account with the
// ApplicationImpersonation role — and EWS_URL, the double's).
//
// sign in → new Exchange Server profile (Autodiscover, NTLM, impersonation, the service
// account) → make it default → email settings without appointments, contacts and tasks →
// approve → apply default email settings → test & enable: the
// status fields show success, the alert names incoming (EWS) and the mailbox shows the EWS URL
// Autodiscover found and the server version; then a wrong service-account password: test &
// enable from the profile fails at the authentication step. Screenshots: exchange-profile,
// exchange-mailbox-success, exchange-mailbox-failure.

import { launch, newPage, screenshot, step, jobDone as jobDoneOn, notice as noticeOn, selectRow } from './lib.mjs';

const { BASE_URL, TOKEN, MAILBOX, SERVICE, SERVICE_PASSWORD, EWS_URL } = process.env;
const PROFILE = 'Contoso Exchange';
const browser = await launch();
let failed = false;
try {
  const page = await newPage(browser, { viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(30_000);
  const notice = (text) => noticeOn(page, text);
  const select = (email) => selectRow(page, email);
  const jobDone = () => jobDoneOn(page);
  const openMailbox = async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await page.getByRole('link', { name: MAILBOX }).click();
  };

  await step('sign in', async () => {
    await page.goto(`${BASE_URL}/`);
    await page.getByLabel(/API token/).fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in with the token' }).click();
    await page.getByRole('heading', { name: 'Sync dashboard' }).waitFor();
  });
  await step('create an Exchange Server profile with Autodiscover and impersonation', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('link', { name: 'Exchange Server (EWS)' }).click();
    await page.getByLabel(/^Name/).fill(PROFILE);
    await page.getByLabel('Authentication type').selectOption('impersonation');
    const autodiscover = page.getByLabel('Find the server through Autodiscover');
    if (!(await autodiscover.isChecked())) throw new Error('Autodiscover is not on by default');
    await page.getByLabel('Authentication protocol').selectOption('ntlm');
    await page.getByLabel('Exchange version').selectOption('');
    await page.getByLabel('Use impersonation').check();
    await page.getByLabel('Service account user name').fill(SERVICE);
    await page.getByLabel('Service account password').fill(SERVICE_PASSWORD);
    await page.getByRole('button', { name: 'Create profile' }).click();
    await notice('The profile was created.');
    // The saved profile shows what was chosen.
    if ((await page.getByLabel('Authentication protocol').inputValue()) !== 'ntlm') {
      throw new Error('the authentication protocol was not saved');
    }
    if (!(await page.getByLabel('Use impersonation').isChecked())) {
      throw new Error('impersonation was not saved');
    }
    if ((await page.getByLabel('Service account user name').inputValue()) !== SERVICE) {
      throw new Error('the service account was not saved');
    }
    await screenshot(page, 'exchange-profile');
  });
  await step('make it the default profile', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('button', { name: `Make ${PROFILE} the default profile` }).click();
    await notice('now the default');
  });
  await step('email settings: appointments, contacts and tasks not synchronized', async () => {
    // Exchange's appointments, contacts and tasks are not synchronized yet (test and enable
    // would refuse the mailbox): email only.
    await page.getByRole('link', { name: 'Email settings' }).click();
    await page.getByLabel('Appointments, contacts and tasks').selectOption('none');
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await notice('The email settings were saved.');
  });
  await step('approve the mailbox and apply the default email settings', async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await select(MAILBOX);
    await page.getByRole('button', { name: 'Approve email' }).click();
    await notice('approved (1 mailbox(es))');
    await select(MAILBOX);
    await page.getByRole('button', { name: 'Apply default email settings' }).click();
    await notice('default email settings were applied (1 mailbox(es))');
    // Applying the defaults queues a test & enable of its own: let it finish first.
    await page.getByRole('link', { name: 'Jobs' }).click();
    await jobDone();
    await page.getByRole('link', { name: 'Mailboxes' }).click();
  });
  await step('test & enable: the job succeeds over EWS', async () => {
    await select(MAILBOX);
    await page.getByRole('button', { name: 'Test & enable mailboxes' }).click();
    await notice('Testing and enabling 1 mailbox(es)');
    const status = await jobDone();
    if (status !== 'succeeded') {
      const why = await page.locator('#jobs tbody tr:first-child .error').allTextContents();
      throw new Error(`the job ended ${status}: ${why.join(' | ')}`);
    }
  });
  await step('the mailbox shows success, the EWS URL found and the server version', async () => {
    await openMailbox();
    const rows = page.locator('#status-fields tbody tr');
    await rows.filter({ hasText: 'Incoming email' }).locator('.status-success').waitFor();
    await rows.filter({ hasText: 'Outgoing email' }).locator('.status-success').waitFor();
    // The alert carries the job item's message: each direction's steps.
    await page
      .locator('#alert-wall tr')
      .filter({ hasText: 'information' })
      .filter({ hasText: 'incoming (EWS)' })
      .filter({ hasText: 'outgoing (EWS)' })
      .filter({ hasText: `autodiscover for ${MAILBOX}` })
      .first()
      .waitFor();
    const telemetry = page.locator('section[aria-labelledby="h-telemetry"] tr');
    await telemetry.filter({ hasText: 'EWS URL' }).filter({ hasText: EWS_URL }).waitFor();
    await telemetry
      .filter({ hasText: 'Exchange server version' })
      .filter({ hasText: 'exchange2019' })
      .waitFor();
    await screenshot(page, 'exchange-mailbox-success');
  });
  await step('a wrong service-account password: test & enable fails at authentication', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('link', { name: PROFILE }).click();
    await page.getByLabel('Service account password').fill('not-the-password');
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await notice('The profile was saved.');
    await page.getByRole('button', { name: 'Test & enable mailboxes of this profile' }).click();
    const status = await jobDone();
    if (status === 'succeeded') throw new Error('the job succeeded with a wrong password');
    await openMailbox();
    await page.locator('#last-error').filter({ hasText: 'Failed step: authentication' }).waitFor();
    await page.locator('#alert-wall').filter({ hasText: 'error' }).waitFor();
    await screenshot(page, 'exchange-mailbox-failure');
  });
} catch {
  failed = true;
  for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
    await screenshot(p, `FAILED-exchange-${i}`).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
