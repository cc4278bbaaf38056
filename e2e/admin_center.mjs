// The admin center's seed flow and failure flow in headless Chromium, against a real
// `serversync serve` and the test mail servers (started by crates/cli/tests/web_ui.rs, which
// passes BASE_URL, TOKEN, IMAPS_PORT, SUBMISSION_PORT, GOOD and BAD — the mailbox that signs
// in and the one whose password is wrong).
//
// sign in → new IMAP/SMTP profile → make it default → apply default email settings to the
// mailboxes → approve → test & enable → the status fields show success and the alert is
// there; then the wrong password: the failing step on the mailbox and the alert for the
// profile owner; the email settings' conflict policy saved. Screenshots of the main pages go
// to $SCREENSHOTS.

import {
  runAdminFlow,
  screenshot,
  step,
  jobDone as jobDoneOn,
  notice as noticeOn,
  selectRow,
  signIn,
} from './lib.mjs';

const { BASE_URL, TOKEN, IMAPS_PORT, SUBMISSION_PORT, GOOD, BAD, ADMIN_EMAIL, ADMIN_PASSWORD } =
  process.env;
await runAdminFlow('', async (page) => {
  const notice = (text) => noticeOn(page, text);
  const select = (email) => selectRow(page, email);
  const jobDone = () => jobDoneOn(page);

  await step('the sign-in page asks for a token', async () => {
    await page.goto(`${BASE_URL}/`);
    await page.getByLabel(/API token/).waitFor();
    await screenshot(page, 'sign-in');
  });
  await step('a wrong token is refused with the reason', async () => {
    await page.getByLabel(/API token/).fill('ss_not-a-token');
    await page.getByRole('button', { name: 'Sign in with the token' }).click();
    await page.getByRole('alert').filter({ hasText: 'not valid' }).waitFor();
  });
  await step('sign in', () => signIn(page, null, TOKEN));
  await step('a profile form with a mistake names the field', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('link', { name: 'IMAP/SMTP server' }).click();
    await page.getByLabel('Incoming (IMAP) server').fill('localhost');
    await page.getByLabel('Outgoing (SMTP) server').fill('localhost');
    await page.getByRole('button', { name: 'Create profile' }).click();
    await page.locator('#f-name-error').filter({ hasText: 'name' }).waitFor();
    await screenshot(page, 'profile-form-error');
  });
  await step('create an IMAP/SMTP server profile', async () => {
    await page.getByLabel(/^Name/).fill('Test mail servers');
    await page.getByLabel('Incoming port', { exact: true }).fill(IMAPS_PORT);
    await page.getByLabel('Incoming encryption').selectOption('implicit');
    await page.getByLabel('Outgoing port', { exact: true }).fill(SUBMISSION_PORT);
    await page.getByLabel('Outgoing encryption').selectOption('start_tls');
    await page.getByRole('button', { name: 'Create profile' }).click();
    await notice('The profile was created.');
    await screenshot(page, 'profile');
  });
  await step('make it the default profile', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('button', { name: 'Make Test mail servers the default profile' }).click();
    await notice('now the default');
    await page.getByText('(default)').waitFor();
    await screenshot(page, 'profiles');
  });
  await step('apply the default email settings to the mailboxes', async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await select(GOOD);
    await select(BAD);
    await page.getByRole('button', { name: 'Apply default email settings' }).click();
    await notice('default email settings were applied (2 mailbox(es))');
  });
  await step('approve their email addresses', async () => {
    await select(GOOD);
    await select(BAD);
    await page.getByRole('button', { name: 'Approve email' }).click();
    await notice('approved (2 mailbox(es))');
    await screenshot(page, 'mailboxes');
  });
  await step('test & enable the good mailbox: the job succeeds', async () => {
    await select(GOOD);
    await page.getByRole('button', { name: 'Test & enable mailboxes' }).click();
    await notice('Testing and enabling 1 mailbox(es)');
    const status = await jobDone();
    if (status !== 'succeeded') throw new Error(`the job ended ${status}`);
    await screenshot(page, 'jobs');
  });
  await step('the status fields show success and the alert appears', async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await page.getByRole('link', { name: GOOD }).click();
    const rows = page.locator('#status-fields tbody tr');
    await rows.filter({ hasText: 'Incoming email' }).locator('.status-success').waitFor();
    await rows.filter({ hasText: 'Outgoing email' }).locator('.status-success').waitFor();
    await page.locator('#alert-wall').filter({ hasText: 'information' }).waitFor();
    await screenshot(page, 'mailbox-success');
  });
  await step('test & enable with a wrong password: the job fails', async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await select(BAD);
    await page.getByRole('button', { name: 'Test & enable mailboxes' }).click();
    const status = await jobDone();
    if (status === 'succeeded') throw new Error('the job succeeded with a wrong password');
  });
  await step('the mailbox shows the failing step and the alert', async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await page.getByRole('link', { name: BAD }).click();
    await page.locator('#last-error').filter({ hasText: 'Failed step: authentication' }).waitFor();
    await page.locator('#alert-wall').filter({ hasText: 'error' }).waitFor();
    await screenshot(page, 'mailbox-failure');
  });
  await step('the alerts page has the error alert for the profile owner', async () => {
    await page.getByRole('link', { name: 'Alerts' }).click();
    await page.locator('#alerts tbody tr').filter({ hasText: BAD }).filter({ hasText: 'error' }).first().waitFor();
    await screenshot(page, 'alerts');
  });
  await step('the dashboard shows the mailbox that needs attention', async () => {
    await page.getByRole('link', { name: 'Sync dashboard' }).click();
    await page.getByRole('link', { name: BAD }).waitFor();
    await page.locator('#database').filter({ hasText: /SQLite: \d/ }).waitFor();
    await screenshot(page, 'dashboard');
  });
  await step('email settings and the audit log', async () => {
    await page.getByRole('link', { name: 'Email settings' }).click();
    await page.getByLabel('Server profile', { exact: true }).waitFor();
    // The conflict policy of appointments, contacts and tasks: saved and shown back.
    const conflicts = page.getByLabel('Two-way sync conflicts');
    if ((await conflicts.inputValue()) !== 'latest_change_wins') {
      throw new Error('the conflict policy does not default to the latest change');
    }
    await conflicts.selectOption('crm_wins');
    await page.getByRole('button', { name: 'Save' }).click();
    await notice('The email settings were saved.');
    if ((await conflicts.inputValue()) !== 'crm_wins') throw new Error('the conflict policy was not saved');
    await screenshot(page, 'email-settings');
    await page.getByRole('link', { name: 'Audit log' }).click();
    await page.getByRole('heading', { name: 'Audit log' }).waitFor();
  });
  await step('keyboard: the skip link and the form controls are reachable by Tab', async () => {
    await page.goto(`${BASE_URL}/settings`);
    await page.keyboard.press('Tab');
    const first = await page.evaluate(() => document.activeElement?.textContent?.trim());
    if (first !== 'Skip to content') throw new Error(`first Tab stop is ${first}`);
  });
  await step('the organizations page lists the organization', async () => {
    await page.getByRole('link', { name: 'Organizations' }).click();
    await page.getByRole('cell', { name: /default \(open\)/ }).waitFor();
  });
  await step('sign out ends the session', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel(/API token/).waitFor();
    await page.goto(`${BASE_URL}/mailboxes`);
    await page.getByLabel(/API token/).waitFor();
  });
  await step('a wrong password is refused, the right one signs in', async () => {
    await page.getByLabel('Email address').fill(ADMIN_EMAIL);
    await page.getByLabel('Password', { exact: true }).fill('not the password');
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.getByRole('alert').filter({ hasText: 'wrong' }).waitFor();
    await page.getByLabel('Email address').fill(ADMIN_EMAIL);
    await page.getByLabel('Password', { exact: true }).fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.getByRole('heading', { name: 'Sync dashboard' }).waitFor();
  });
});
