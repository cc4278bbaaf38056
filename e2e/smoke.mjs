// Smoke test of the browser stack: Chromium starts, a page with a form renders, a field is
// filled through its label, the form's JS submit handler runs, the result is asserted and a
// screenshot written. Needs no server (the page is a data: URL).

import { assertText, screenshot, step, withBrowser } from './lib.mjs';

const html = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>serversync e2e smoke</title></head>
<body style="font-family: sans-serif; margin: 2em">
  <h1>Smoke</h1>
  <form id="greet">
    <label for="name">Your name</label>
    <input id="name" name="name" required>
    <button type="submit">Greet</button>
  </form>
  <p id="out" role="status"></p>
  <script>
    document.getElementById('greet').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const name = new FormData(ev.target).get('name');
      document.getElementById('out').textContent = 'Hello, ' + name + '!';
    });
  </script>
</body>
</html>`;

await withBrowser(async ({ page }) => {
  await step('open form', async () => {
    await page.goto('data:text/html;charset=utf-8,' + encodeURIComponent(html));
    await assertText(page, 'h1', 'Smoke');
  });
  await step('fill and submit', async () => {
    await page.getByLabel('Your name').fill('Ada Lovelace');
    await page.getByRole('button', { name: 'Greet' }).click();
  });
  await step('assert greeting', () => assertText(page, '#out', 'Hello, Ada Lovelace!'));
  await step('screenshot', () => screenshot(page, 'smoke'));
});
