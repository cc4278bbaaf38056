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

const { BASE_URL, TOKEN, MAILBOX, SERVICE, SERVICE_PASSWORD, EWS_URL } = process.env;
const PROFILE = 'Contoso Exchange';
await runAdminFlow('exchange', async (page) => {
  const notice = (text) => noticeOn(page, text);

  await step('sign in', () => signIn(page, BASE_URL, TOKEN));
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
  await exchangeTestEnable(page, PROFILE, MAILBOX);
  await step('the mailbox shows success, the EWS URL found and the server version', async () => {
    await openMailbox(page, MAILBOX);
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
  await step('a wrong service-account password: test & enable fails at authentication', () =>
    exchangeWrongSecret(page, {
      profile: PROFILE,
      mailbox: MAILBOX,
      label: 'Service account password',
      shot: 'exchange-mailbox-failure',
    }),
  );
});
