// Version 2's bounds on what one client can make the server hold or do: a message's
// reactions are capped at 20 different emoji (every update frame carries them all, to
// every member), and a search takes a token of the user's read bucket (each one walks the
// index). On SQLite by default, on PostgreSQL with PARLEY_E2E_PG_URL (v2-helpers.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { signupMany, createGroup, openSocket, sendMany } from './helpers.mjs';
import { startV2Server, react, okAck, errCode, httpReact, search, messageAt } from './v2-helpers.mjs';

let srv;
let a; let b;
before(async () => {
  srv = await startV2Server({ PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0', PARLEY_READ_RATE: '1', PARLEY_READ_BURST: '3' });
  [a, b] = await signupMany(srv, 2, 'v2lim');
});
after(async () => { if (srv) await srv.stop(); });

test('a message holds at most 20 different reactions: the 21st emoji is refused, one already there is still taken', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  const cb = await openSocket(srv, b.token);
  const [{ seq }] = await sendMany(ca, g.id, 1);
  for (let i = 0; i < 20; i++) await okAck(react(ca, g.id, seq, `e${i}`), `emoji ${i}`);
  const refused = await errCode(react(ca, g.id, seq, 'e20'), 'bad_request', 'a 21st emoji');
  assert.match(refused.message, /too many different reactions/);
  const http = await httpReact(srv, b, g.id, seq, 'e21');
  assert.equal(http.status, 400, 'the same over HTTP');
  // an emoji already on the message: another user still adds it; removing frees nothing new
  await okAck(react(cb, g.id, seq, 'e0'), 'b adds an emoji already there');
  await okAck(react(ca, g.id, seq, 'e5', false), 'a removes one of its own');
  await okAck(react(cb, g.id, seq, 'e20'), 'with 19 left, a new one is taken');
  const m = await messageAt(srv, a, g.id, seq);
  assert.equal(Object.keys(m.reactions).length, 20);
  assert.deepEqual(m.reactions.e0, [a.user.id, b.user.id]);
  ca.close();
  cb.close();
});

test('searches take tokens of the read bucket: over the burst, 429 with Retry-After; later, served again', async () => {
  const codes = [];
  let retry = null;
  for (let i = 0; i < 5; i++) {
    const res = await search(srv, a, { q: 'anything' });
    codes.push(res.status);
    if (res.status === 429) retry = res.headers.get('retry-after');
  }
  assert.deepEqual(codes, [200, 200, 200, 429, 429], 'a burst of 3, then refused');
  assert.ok(Number(retry) >= 1, `Retry-After: ${retry}`);
  await new Promise((r) => setTimeout(r, Number(retry) * 1000));
  assert.equal((await search(srv, a, { q: 'anything' })).status, 200, 'served again after Retry-After');
  assert.equal((await search(srv, b, { q: 'anything' })).status, 200, 'another user was never limited');
});
