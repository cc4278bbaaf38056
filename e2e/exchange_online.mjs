// The admin center's Exchange Online flow in headless Chromium, against a real
// `serversync serve` whose [exchange] graph_url and login_url point at the Microsoft Graph
// test double (started by crates/cli/tests/web_ui.rs, which passes BASE_URL, TOKEN — a token
// of a system administrator who is also a tenant Exchange administrator, as approving a
// mailbox of an Exchange Online profile requires — MAILBOX, a mailbox the double knows, and
// TENANT, APP and SECRET, the app registration the double accepts).
//
// sign in → new Exchange Online profile: only server-to-server authentication, no server
// locations or impersonation; a blank directory (tenant) id is marked on its field; then the
// tenant, the app, its secret (shown back only as "set"; a text area takes a certificate
// instead) and the authority → make it default → email settings without appointments,
// contacts and tasks → approve → apply default email settings → test & enable: the status
// fields show success, and the mailbox asks for no user name or password; then a wrong client
// secret: test & enable from the profile fails at the authentication step with Entra's
// AADSTS7000215.
// Screenshots: exchange-online-profile, exchange-online-mailbox-success,
// exchange-online-mailbox-failure.

import {
  runAdminFlow,
  screenshot,
  step,
  notice as noticeOn,
  exchangeTestEnable,
  exchangeWrongSecret,
  openMailbox,
  signIn,
} from './lib.mjs';

const { BASE_URL, TOKEN, MAILBOX, TENANT, APP, SECRET } = process.env;
const PROFILE = 'Contoso 365';
await runAdminFlow('exchange-online', async (page) => {
  const notice = (text) => noticeOn(page, text);
  const secretState = () => page.locator('#f-oauth-client_secret-state').textContent();

  await step('sign in', () => signIn(page, BASE_URL, TOKEN));
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
    // A certificate can stand in for the secret: pasted as PEM into a text area.
    const cert = page.getByLabel('Or: certificate and private key');
    if ((await cert.evaluate((e) => e.tagName)) !== 'TEXTAREA') {
      throw new Error('the certificate is not a text area');
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
  // Approving takes a tenant administrator: TOKEN is one's.
  await exchangeTestEnable(page, PROFILE, MAILBOX);
  await step('the mailbox shows success', async () => {
    await openMailbox(page, MAILBOX);
    const rows = page.locator('#status-fields tbody tr');
    await rows.filter({ hasText: 'Incoming email' }).locator('.status-success').waitFor();
    await rows.filter({ hasText: 'Outgoing email' }).locator('.status-success').waitFor();
    await page.locator('#alert-wall tr').filter({ hasText: 'information' }).first().waitFor();
    // The app signs in for every mailbox: nothing to enter on the mailbox.
    for (const absent of ['User name', 'Password']) {
      if ((await page.getByLabel(absent, { exact: true }).count()) !== 0) {
        throw new Error(`the Exchange Online mailbox has a ${absent} field`);
      }
    }
    await screenshot(page, 'exchange-online-mailbox-success');
  });
  await step('a wrong client secret: test & enable fails at authentication (AADSTS7000215)', async () => {
    await exchangeWrongSecret(page, {
      profile: PROFILE,
      mailbox: MAILBOX,
      label: 'Client secret',
      text: 'AADSTS7000215',
      shot: 'exchange-online-mailbox-failure',
    });
    // Still only "set": the wrong secret is not shown back either.
    await page.getByRole('link', { name: 'Server profiles' }).click();
    await page.getByRole('link', { name: PROFILE }).click();
    if ((await secretState()) !== '(set)') throw new Error('the client secret is not shown as set');
  });
});
