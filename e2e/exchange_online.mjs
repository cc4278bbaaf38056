// The admin center's Exchange Online flow in headless Chromium, against a real
// `serversync serve` whose [exchange] graph_url and login_url point at the Microsoft Graph
// test double (started by crates/cli/tests/web_ui.rs, which passes BASE_URL, TOKEN — a token
// of a system administrator who is also a tenant Exchange administrator, as approving a
// mailbox of an Exchange Online profile requires — MAILBOX, a mailbox the double knows, and
// TENANT, APP and SECRET, the app registration the double accepts).
//
// sign in → new Exchange Online profile: only server-to-server authentication, no server
// locations or impersonation; a blank directory (tenant) id is marked on its field; then the
// tenant, the app, its secret (shown back only as "set") and the authority → make it default →
// email settings without appointments, contacts and tasks → approve → apply default email
// settings → test & enable: the status fields show success; then a wrong client secret: test &
// enable from the profile fails at the authentication step with Entra's AADSTS7000215.
// Screenshots: exchange-online-profile, exchange-online-mailbox-success,
// exchange-online-mailbox-failure.

import { launch, newPage, screenshot, step, jobDone as jobDoneOn, notice as noticeOn, selectRow } from './lib.mjs';

const { BASE_URL, TOKEN, MAILBOX, TENANT, APP, SECRET } = process.env;
const PROFILE = 'Contoso 365';
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
  const secretState = () => page.locator('#f-oauth-client_secret-state').textContent();

  await step('sign in', async () => {
    await page.goto(`${BASE_URL}/`);
    await page.getByLabel(/API token/).fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in with the token' }).click();
    await page.getByRole('heading', { name: 'Sync dashboard' }).waitFor();
  });
  await step('the Exchange Online form: the app registration, nothing of EWS', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('link', { name: 'Exchange Online (Microsoft 365)' }).click();
    const auth = await page.getByLabel('Authentication type').locator('option').evaluateAll(
      (os) => os.map((o) => o.value),
    );
    if (auth.join() !== 'server_to_server') throw new Error(`authentication choices: ${auth}`);
    for (const absent of [
      'Find the server through Autodiscover',
      'EWS URL',
      'Use impersonation',
      'Authentication protocol',
      'Service account user name',
      'Incoming port',
    ]) {
      if ((await page.getByLabel(absent).count()) !== 0) throw new Error(`the form has ${absent}`);
    }
    const authorities = await page.getByLabel('Authority').locator('option').evaluateAll(
      (os) => os.map((o) => o.value),
    );
    if (authorities.join() !== 'automatic,public,us_government,china') {
      throw new Error(`authorities: ${authorities}`);
    }
  });
  await step('a blank directory (tenant) id is marked on its field', async () => {
    await page.getByLabel(/^Name/).fill(PROFILE);
    // Blank but not empty: the browser lets it through, the API names the field.
    await page.getByLabel('Directory (tenant) id').fill(' ');
    await page.getByLabel('Application (client) id').fill(APP);
    await page.getByLabel('Client secret').fill(SECRET);
    await page.getByRole('button', { name: 'Create profile' }).click();
    await page.locator('#f-oauth-tenant_id-error').waitFor();
    if ((await page.getByLabel('Directory (tenant) id').getAttribute('aria-invalid')) !== 'true') {
      throw new Error('the tenant id is not marked invalid');
    }
  });
  await step('create the Exchange Online profile', async () => {
    await page.getByLabel('Directory (tenant) id').fill(TENANT);
    await page.getByLabel('Application (client) id').fill(APP);
    // A secret is never filled back after a problem: typed again.
    await page.getByLabel('Client secret').fill(SECRET);
    await page.getByLabel('Authority').selectOption('public');
    await page.getByRole('button', { name: 'Create profile' }).click();
    await notice('The profile was created.');
    if ((await page.getByLabel('Directory (tenant) id').inputValue()) !== TENANT) {
      throw new Error('the tenant id was not saved');
    }
    if ((await page.getByLabel('Authority').inputValue()) !== 'public') {
      throw new Error('the authority was not saved');
    }
    if ((await page.getByLabel('Client secret').inputValue()) !== '') {
      throw new Error('the client secret is shown back');
    }
    if ((await secretState()) !== '(set)') throw new Error('the client secret is not shown as set');
    await screenshot(page, 'exchange-online-profile');
  });
  await step('make it the default profile', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('button', { name: `Make ${PROFILE} the default profile` }).click();
    await notice('now the default');
  });
  await step('email settings: appointments, contacts and tasks not synchronized', async () => {
    await page.getByRole('link', { name: 'Email settings' }).click();
    await page.getByLabel('Appointments, contacts and tasks').selectOption('none');
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await notice('The email settings were saved.');
  });
  await step('approve the mailbox (a tenant administrator) and apply the default email settings', async () => {
    await page.getByRole('link', { name: 'Mailboxes' }).click();
    await select(MAILBOX);
    await page.getByRole('button', { name: 'Approve email' }).click();
    await notice('approved (1 mailbox(es))');
    await select(MAILBOX);
    await page.getByRole('button', { name: 'Apply default email settings' }).click();
    await notice('default email settings were applied (1 mailbox(es))');
    await page.getByRole('link', { name: 'Jobs' }).click();
    await jobDone();
    await page.getByRole('link', { name: 'Mailboxes' }).click();
  });
  await step('test & enable: the job succeeds over Microsoft Graph', async () => {
    await select(MAILBOX);
    await page.getByRole('button', { name: 'Test & enable mailboxes' }).click();
    await notice('Testing and enabling 1 mailbox(es)');
    const status = await jobDone();
    if (status !== 'succeeded') {
      const why = await page.locator('#jobs tbody tr:first-child .error').allTextContents();
      throw new Error(`the job ended ${status}: ${why.join(' | ')}`);
    }
  });
  await step('the mailbox shows success', async () => {
    await openMailbox();
    const rows = page.locator('#status-fields tbody tr');
    await rows.filter({ hasText: 'Incoming email' }).locator('.status-success').waitFor();
    await rows.filter({ hasText: 'Outgoing email' }).locator('.status-success').waitFor();
    await page.locator('#alert-wall tr').filter({ hasText: 'information' }).first().waitFor();
    await screenshot(page, 'exchange-online-mailbox-success');
  });
  await step('a wrong client secret: test & enable fails at authentication (AADSTS7000215)', async () => {
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('link', { name: PROFILE }).click();
    await page.getByLabel('Client secret').fill('not-the-secret');
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await notice('The profile was saved.');
    if ((await secretState()) !== '(set)') throw new Error('the client secret is not shown as set');
    await page.getByRole('button', { name: 'Test & enable mailboxes of this profile' }).click();
    const status = await jobDone();
    if (status === 'succeeded') throw new Error('the job succeeded with a wrong secret');
    await openMailbox();
    await page
      .locator('#last-error')
      .filter({ hasText: 'Failed step: authentication' })
      .filter({ hasText: 'AADSTS7000215' })
      .waitFor();
    await page.locator('#alert-wall').filter({ hasText: 'error' }).waitFor();
    await screenshot(page, 'exchange-online-mailbox-failure');
  });
} catch {
  failed = true;
  for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
    await screenshot(p, `FAILED-exchange-online-${i}`).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
