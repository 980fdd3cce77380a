// Sessions: a reload keeps you logged in and in your conversation; logout ends it;
// log in again with the password. Plus a keyboard-only path through the app.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, signup, quickUser, startDirect, openConv, send, waitBodies, online, T } from './helpers.mjs';

let env;
before(async () => { env = await launch(); });
after(async () => { if (env) await env.close(); });

test('a reload keeps the session and the open conversation', async () => {
  const a = await signup(env, 'rita', { display: 'Rita' });
  const b = await quickUser(env, 'sam', { display: 'Sam' });
  await startDirect(a, b);
  await send(a, 'before the reload');
  await waitBodies(a.page, ['before the reload']);
  const stored = await a.page.evaluate(() => JSON.parse(localStorage.getItem('parley.session')));
  assert.equal(typeof stored.refresh_token, 'string');
  const hash = await a.page.evaluate(() => location.hash);
  assert.match(hash, /^#\/c\/\d+$/);

  await a.page.reload();
  await a.page.getByTestId('main-screen').waitFor({ timeout: T });
  await a.page.getByTestId('me-name').filter({ hasText: 'Rita' }).waitFor({ timeout: T });
  await a.page.getByTestId('pane-title').filter({ hasText: 'Sam' }).waitFor({ timeout: T });
  await waitBodies(a.page, ['before the reload']);
  assert.equal(await a.page.getByTestId('auth-screen').isVisible(), false);
  await online(a.page);
  // still live after the reload, both ways
  await openConv(b, 'Rita');
  await send(b, 'after the reload');
  await waitBodies(a.page, ['before the reload', 'after the reload']);
  await send(a, 'still here');
  await waitBodies(b.page, ['before the reload', 'after the reload', 'still here']);
  test.a = a; test.b = b;
});

test('logout ends the session; logging in again works', async () => {
  const { a } = test;
  await a.page.getByTestId('logout').click();
  await a.page.getByTestId('auth-screen').waitFor({ timeout: T });
  assert.equal(await a.page.evaluate(() => localStorage.getItem('parley.session')), null);
  await a.page.reload();
  await a.page.getByTestId('auth-screen').waitFor({ timeout: T });
  await a.page.getByLabel('Username').fill(a.username);
  await a.page.getByLabel('Password').fill('wrong-password');
  await a.page.getByTestId('auth-submit').click();
  await a.page.getByTestId('auth-error').filter({ hasText: 'Wrong username or password' }).waitFor({ timeout: T });
  await a.page.getByLabel('Password').fill('correct-horse-1');
  await a.page.getByTestId('auth-submit').click();
  await a.page.getByTestId('main-screen').waitFor({ timeout: T });
  await a.page.getByTestId('conv-item').first().waitFor({ timeout: T });
});

test('keyboard only: find someone, open the chat, send, go back', async () => {
  const { a } = test;
  const c = await quickUser(env, 'kim', { display: 'Kim' });
  const { page } = c;
  await page.keyboard.press('Control+k');
  await page.keyboard.type(a.username);
  await page.getByTestId('people-results').locator(`[data-testid="user-result"][data-username="${a.username}"][aria-selected="true"]`).waitFor({ timeout: T });
  await page.keyboard.press('Enter');
  await page.getByTestId('pane-title').filter({ hasText: 'Rita' }).waitFor({ timeout: T });
  await page.waitForFunction(() => document.activeElement && document.activeElement.dataset.testid === 'composer', null, { timeout: T });
  await page.keyboard.type('typed without a mouse');
  await page.keyboard.press('Enter');
  await waitBodies(page, ['typed without a mouse']);
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => document.activeElement && document.activeElement.dataset.testid === 'conv-item', null, { timeout: T });
  // every control has an accessible name
  const unnamed = await page.$$eval('button, input, textarea', (els) => els.filter((e) => e.offsetParent !== null && !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim())).map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, []);
});

test('history loads older pages while scrolling up, in order', async () => {
  const { a } = test;
  // a chatty friend writes 130 messages over HTTP
  const post = (path, body, token) => fetch(env.srv.url + path, {
    method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body),
  }).then((r) => r.json());
  const friend = await post('/api/auth/signup', { username: `${a.username}_pal`, password: 'password-123', display_name: 'Pal' });
  const me = await a.page.evaluate(() => window.parley.user.id);
  const conv = await post('/api/conversations', { kind: 'direct', user_id: me }, friend.access_token);
  for (let i = 1; i <= 130; i++) await post(`/api/conversations/${conv.id}/messages`, { id: `hist-${i}`, body: `history ${i}` }, friend.access_token);
  await a.page.reload(); // start from an empty view: what a new visitor sees
  await a.page.getByTestId('conv-item').filter({ hasText: 'Pal' }).click();
  await a.page.getByTestId('pane-title').filter({ hasText: 'Pal' }).waitFor();
  await a.page.getByTestId('message').filter({ hasText: 'history 130' }).waitFor();
  const first = await a.page.getByTestId('message').count();
  assert.ok(first < 130, `only the newest page at first (${first})`);
  // scroll to the top until the beginning shows
  await a.page.waitForFunction(() => {
    const box = document.querySelector('[data-testid="messages"]');
    box.scrollTop = 0;
    box.dispatchEvent(new Event('scroll'));
    return document.querySelector('[data-testid="history-status"]').dataset.state === 'start';
  }, null, { timeout: T, polling: 200 });
  const seqs = await a.page.$$eval('[data-testid="message"]', (els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, Array.from({ length: 130 }, (_, i) => i + 1));
  const texts = await a.page.$$eval('[data-testid="msg-body"]', (els) => els.map((e) => e.textContent));
  assert.equal(texts[0], 'history 1');
  assert.equal(texts[129], 'history 130');
});
