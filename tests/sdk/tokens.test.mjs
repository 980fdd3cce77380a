// Access tokens in the SDK: refreshed before they expire (the socket stays up and is
// re-authorized with `auth`), on a 401, and after a 4001 close. The server runs with
// PARLEY_ACCESS_TTL_S=3.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { start } from '../lib/server.mjs';
import { signedUp, waitFor, collect, tapSocket, sleep } from './helpers.mjs';

let srv;
const clients = [];
const track = (c) => { clients.push(c); return c; };

before(async () => { srv = await start({ env: { PARLEY_ACCESS_TTL_S: '3' } }); });
after(async () => {
  for (const c of clients) c.destroy();
  if (srv) await srv.stop();
});

test('the access token is refreshed before it expires; the socket stays up', async () => {
  const tap = tapSocket();
  const a = track(await signedUp(srv, { WebSocket: tap.TapSocket }));
  const b = track(await signedUp(srv));
  const conv = (await a.createDirect(b.user.id)).id;
  const tokens = new Set([a.session.access_token]);
  const refreshTokens = new Set([a.session.refresh_token]);
  a.on('token', () => { tokens.add(a.session.access_token); refreshTokens.add(a.session.refresh_token); });
  const states = [];
  a.on('state', (s) => states.push(s));
  await sleep(7500); // more than two lifetimes
  assert.ok(tokens.size >= 3, `refreshed ${tokens.size - 1} times`);
  assert.ok(refreshTokens.size >= 3, 'refresh tokens rotate');
  assert.equal(tap.sockets.length, 1, 'no reconnect was needed');
  assert.deepEqual(tap.closes, []);
  assert.deepEqual(states, [], 'never left online');
  const auths = tap.sent.filter((f) => f.op === 'auth');
  assert.ok(auths.length >= 3, 'the open socket is re-authorized with each new token');
  assert.equal(tap.received.filter((f) => f.op === 'hello').length, auths.length);
  const mb = collect(b);
  const ack = await a.send(conv, 'still here');
  assert.equal(ack.seq, 1);
  await waitFor(() => mb.all.length === 1, 5000, 'delivery after refreshes');
  assert.equal((await a.conversations()).length, 1);
});

test('a 401 on HTTP refreshes the token and retries once', async () => {
  const a = track(await signedUp(srv, { autoRefresh: false }));
  const before = a.session.refresh_token;
  // a token the client believes valid but the server refuses
  a.session.access_token = a.session.access_token.replace(/.$/, (ch) => (ch === 'A' ? 'B' : 'A'));
  a.session.expires_at = Date.now() + 60000;
  const me = await a.me();
  assert.equal(me.id, a.user.id);
  assert.notEqual(a.session.refresh_token, before, 'refreshed');
  // an expired one (after the real lifetime) is handled the same way
  await sleep(3300);
  a.session.expires_at = Date.now() + 60000;
  assert.equal((await a.conversations()).length, 0);
});

test('a socket closed with 4001 at expiry refreshes and reconnects', async () => {
  const tap = tapSocket();
  const a = track(await signedUp(srv, { WebSocket: tap.TapSocket, autoRefresh: false }));
  const b = track(await signedUp(srv));
  const conv = (await a.createDirect(b.user.id)).id;
  const ma = collect(a);
  await waitFor(() => tap.closes.includes(4001), 6000, 'server closes the expired socket');
  await waitFor(() => a.state === 'online' && tap.sockets.length >= 2, 5000, 'back online');
  await b.send(conv, 'after expiry');
  await waitFor(() => ma.all.length === 1, 5000, 'delivered on the new socket');
  assert.equal(ma.all[0].body, 'after expiry');
});

test('a refused refresh token ends the session', async () => {
  const a = track(await signedUp(srv, { autoRefresh: false }));
  const ended = [];
  a.on('session', (u, reason) => ended.push([u, reason]));
  // rotate it behind the client's back, twice: theft detection revokes the family
  const rt = a.session.refresh_token;
  const r1 = await fetch(`${srv.url}/api/auth/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: rt }) });
  assert.equal(r1.status, 200);
  a.session.expires_at = 0; // force a refresh on the next call
  await assert.rejects(a.me(), { code: 'unauthorized' });
  assert.deepEqual(ended, [[null, 'expired']]);
  assert.equal(a.state, 'offline');
});
