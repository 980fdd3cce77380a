// Short-lived access tokens in the browser (PARLEY_ACCESS_TTL_S=3): the page stays
// online across many refreshes, two tabs of one user share the rotating refresh token
// without tripping the server's reuse detection, and a reload mid-way keeps the session.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, quickUser, startDirect, send, waitBodies, online, T } from './helpers.mjs';

let env;
before(async () => { env = await launch({ env: { PARLEY_ACCESS_TTL_S: '3' } }); });
after(async () => { if (env) await env.close(); });

const watch = () => {
  window.__events = [];
  window.parley.on('token', () => window.__events.push('token'));
  window.parley.on('state', (s) => window.__events.push(s));
  window.parley.on('session', (u, why) => window.__events.push(`session:${u ? 'in' : why}`));
};

test('two tabs of one user stay logged in and online across token refreshes', async () => {
  const a = await quickUser(env, 'tess');
  const b = await quickUser(env, 'theo');
  const tab2 = await a.ctx.newPage();
  await tab2.goto('/');
  await tab2.getByTestId('main-screen').waitFor();
  await online(tab2);
  await a.page.evaluate(watch);
  await tab2.evaluate(watch);
  await startDirect(a, b);
  // several lifetimes; both tabs refresh, in turn, with the newest refresh token
  await a.page.waitForFunction(() => window.__events.filter((e) => e === 'token').length >= 3, null, { timeout: 15000 });
  await tab2.waitForFunction(() => window.__events.filter((e) => e === 'token').length >= 3, null, { timeout: 15000 });
  for (const p of [a.page, tab2]) {
    const ev = await p.evaluate(() => window.__events);
    assert.deepEqual(ev.filter((e) => e !== 'token'), [], `no disconnect, no logout: ${ev}`);
  }
  await send(a, 'still online');
  await startDirect({ page: tab2 }, b);
  await waitBodies(tab2, ['still online']);
  await a.page.reload();
  await a.page.getByTestId('pane-title').filter({ hasText: b.display }).waitFor({ timeout: T });
  await online(a.page);
  await startDirect(b, a);
  await send(b, 'after the reload');
  await waitBodies(a.page, ['still online', 'after the reload']);
  await waitBodies(tab2, ['still online', 'after the reload']);
  assert.equal(await tab2.evaluate(() => window.parley.state), 'online');
  // logging out in one tab logs out the other
  await tab2.getByTestId('logout').click();
  await a.page.getByTestId('auth-screen').waitFor({ timeout: T });
});
