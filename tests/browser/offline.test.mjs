// Going offline and coming back: nothing lost, nothing doubled, order kept, unread right,
// and messages written while offline wait as "pending" and go out once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, quickUser, startDirect, openConv, convItem, send, waitBodies, waitUnread, online, T } from './helpers.mjs';

let env;
before(async () => { env = await launch(); });
after(async () => { if (env) await env.close(); });

async function banner(page, state) {
  const b = page.getByTestId('connection-banner');
  if (state === 'hidden') await b.waitFor({ state: 'hidden', timeout: T });
  else await page.locator(`[data-testid="connection-banner"][data-state="${state}"]`).waitFor({ timeout: T });
}

// A's page shows B's presence: the server tells A when B's last connection is gone.
const presence = (u, title, on) => convItem(u.page, title).locator(`[data-testid="presence-dot"][data-online="${on}"]`).waitFor({ timeout: T });

// Ann and Ben of their own (each test makes its own pair: none depends on another's run),
// with a direct conversation holding 'hello' from Ann and 'hi' from Ben.
async function pair() {
  const a = await quickUser(env, 'ann', { display: 'Ann' });
  const b = await quickUser(env, 'ben', { display: 'Ben' });
  await startDirect(a, b);
  await send(a, 'hello');
  await waitUnread(b.page, 'Ann', 1);
  await openConv(b, 'Ann');
  await send(b, 'hi');
  await waitBodies(a.page, ['hello', 'hi']);
  return { a, b };
}

test('B goes offline, A sends 5, B comes back: all 5 once, in order, unread right', async () => {
  const { a, b } = await pair();
  // B leaves the conversation screen (Escape in the empty composer)
  await b.page.getByTestId('composer').press('Escape');
  await b.page.getByTestId('conversation-pane').getByText('Pick a conversation').waitFor({ timeout: T });
  await waitUnread(b.page, 'Ann', 0);

  await presence(a, 'Ben', true);
  await b.ctx.setOffline(true);
  await banner(b.page, 'offline');
  // B really is disconnected: the server let B's connection go (A is told B is offline),
  // so nothing A sends from now on can reach B before B reconnects
  await presence(a, 'Ben', false);
  const five = [1, 2, 3, 4, 5].map((i) => `while you were away ${i}`);
  for (const t of five) await send(a, t);
  await a.page.waitForFunction(() => {
    const ms = [...document.querySelectorAll('[data-testid="message"]')];
    return ms.length === 7 && ms.every((m) => m.dataset.status !== 'pending');
  }, null, { timeout: T });
  // stored and acked for A; B has no connection, and its page shows nothing new
  await waitUnread(b.page, 'Ann', 0);
  assert.notEqual(await b.page.evaluate(() => window.parley.state), 'online');

  await b.ctx.setOffline(false);
  await online(b.page);
  await banner(b.page, 'hidden');
  await waitUnread(b.page, 'Ann', 5);
  await openConv(b, 'Ann');
  await waitBodies(b.page, ['hello', 'hi', ...five]);
  const seqs = await b.page.$$eval('[data-testid="message"]', (els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7]);
  await waitUnread(b.page, 'Ann', 0);
  // A sees them read
  await a.page.waitForFunction(() => [...document.querySelectorAll('[data-testid="message"].mine')].every((m) => m.dataset.status === 'read'), null, { timeout: T });
});

test('a message written offline stays pending, then goes out exactly once', async () => {
  const { a, b } = await pair();
  await b.ctx.setOffline(true);
  await banner(b.page, 'offline');
  await send(b, 'written offline');
  const mine = b.page.getByTestId('message').filter({ hasText: 'written offline' });
  assert.equal(await mine.getAttribute('data-status'), 'pending');
  await b.ctx.setOffline(false);
  await b.page.waitForFunction(() => {
    const m = [...document.querySelectorAll('[data-testid="message"]')].at(-1);
    return m && m.dataset.status !== 'pending';
  }, null, { timeout: T });
  const want = ['hello', 'hi', 'written offline'];
  await waitBodies(a.page, want);
  await waitBodies(b.page, want);
  // no late duplicate from a resend: B holds nothing unacknowledged any more (nothing is
  // left to resend), and the server stored the message once
  await b.page.waitForFunction(() => window.parley.pending(Number(location.hash.split('/').pop())).length === 0, null, { timeout: T });
  await waitBodies(a.page, want);
  const page = await b.page.evaluate(async () => window.parley.history(Number(location.hash.split('/').pop())));
  assert.equal(page.messages.filter((m) => m.body === 'written offline').length, 1);
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED|net::/.test(e)), []);
});
