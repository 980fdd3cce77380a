// The SDK (web/parley.js) in Node against a real server: delivery, reconnect + sync,
// idempotent resends, gap detection, ordering. The server binary is $PARLEYD.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { client, signedUp, online, waitFor, collect, tapSocket, suite } from './helpers.mjs';

const S = suite();
const { track, pair } = S;

test('login, live delivery and acks', async () => {
  const { a, b, conv } = await pair();
  const ma = collect(a);
  const mb = collect(b);
  const ack = await a.send(conv, 'hello b');
  assert.equal(ack.conv, conv);
  assert.equal(ack.seq, 1);
  assert.equal(typeof ack.id, 'string');
  const ack2 = await b.send(conv, 'hello a');
  assert.equal(ack2.seq, 2);
  await waitFor(() => mb.all.length === 2 && ma.all.length === 2, 5000, 'both messages on both sides');
  assert.deepEqual(mb.bodies(conv), ['hello b', 'hello a']);
  assert.deepEqual(ma.seqs(conv), [1, 2]);
  assert.equal(mb.all[0].from, a.user.id);
  assert.equal(mb.all[0].id, ack.id);

  // a second login of the same user works and sees the history over HTTP
  const a2 = track(client(S.srv));
  await a2.login(a.user.username, 'password-123');
  await online(a2);
  const page = await a2.history(conv);
  assert.deepEqual(page.messages.map((m) => m.body), ['hello a', 'hello b']);
  const list = await a2.conversations();
  assert.equal(list[0].id, conv);
  assert.equal(list[0].last_message.body, 'hello a');

  // local refusals never reach the server
  await assert.rejects(a.send(conv, ''), { code: 'bad_request' });
  await assert.rejects(a.send(conv, 'x'.repeat(4097)), { code: 'too_large' });
  // a server refusal rejects the promise: not a member
  const stranger = track(await signedUp(S.srv, {}, 's'));
  await assert.rejects(stranger.send(conv, 'let me in'), (e) => e.code === 'not_found' || e.code === 'forbidden');
});

test('reconnect with backoff and sync after the server drops every connection', async () => {
  const gate = { down: false };
  const tap = tapSocket({ refuse: () => gate.down });
  const { a, b, conv } = await pair({}, { WebSocket: tap.TapSocket, reconnect: { initialMs: 50, maxMs: 400 } });
  const mb = collect(b);
  await a.send(conv, 'before');
  await waitFor(() => mb.all.length === 1, 5000, 'first message');
  const states = [];
  b.on('state', (s) => states.push(s));
  const delays = [];
  const attempts = [];
  b.on('reconnect_scheduled', ({ delay, attempt }) => { delays.push(delay); attempts.push(attempt); });

  gate.down = true; // B cannot reach the server until we say so
  await S.srv.kill9();
  const srv2 = await S.srv.restart();
  try {
    await online(a, 15000);
    for (let i = 1; i <= 5; i++) await a.send(conv, `missed ${i}`);
    await waitFor(() => delays.length >= 5, 10000, 'several reconnect attempts');
    // docs/SDK.md: attempt n (from 0) waits between half and all of min(maxMs, initialMs * 2^n):
    // 25-50, 50-100, 100-200, then 200-400 ms; jitter alone cannot pass this
    assert.deepEqual(attempts, attempts.map((_, i) => attempts[0] + i), `attempts counted one by one: ${attempts}`);
    delays.forEach((d, i) => {
      const ceiling = Math.min(400, 50 * 2 ** (attempts[i] - 1));
      assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${attempts[i]}: ${d} ms not in [${ceiling / 2}, ${ceiling}] (all: ${delays})`);
    });
    assert.equal(attempts[0], 1, 'the first attempt after being online starts the backoff over');
    assert.equal(b.state, 'reconnecting');
    assert.equal(mb.all.length, 1);

    gate.down = false;
    await online(b, 10000);
    await waitFor(() => mb.all.length === 6, 10000, 'the 5 missed messages');
    assert.deepEqual(mb.bodies(conv), ['before', 'missed 1', 'missed 2', 'missed 3', 'missed 4', 'missed 5']);
    assert.deepEqual(mb.seqs(conv), [1, 2, 3, 4, 5, 6]);
    const syncs = tap.sent.filter((f) => f.op === 'sync');
    assert.ok(syncs.length >= 2, 'a sync on connect and on reconnect');
    assert.equal(syncs.at(-1).since[String(conv)], 1, 'the sync carries the last seq held');
    assert.ok(states.includes('reconnecting') && states.at(-1) === 'online', `states: ${states}`);
  } finally {
    S.srv = srv2; // the after() hook stops it
    process.on('exit', () => rmSync(srv2.dataDir, { recursive: true, force: true }));
  }
});

test('a graceful server restart (close 1001): sends made meanwhile go out once afterwards', async () => {
  const tap = tapSocket();
  const { a, b, conv } = await pair({ WebSocket: tap.TapSocket });
  const mb = collect(b);
  await a.send(conv, 'before the restart');
  await waitFor(() => mb.all.length === 1, 5000, 'first message');
  await S.srv.stop({ keep: true });
  assert.ok(tap.closes.includes(1001), `closed with 1001 (draining): ${tap.closes}`);
  const queued = [a.send(conv, 'during 1'), a.send(conv, 'during 2')];
  assert.equal(a.pending(conv).length, 2);
  const srv2 = await S.srv.restart();
  S.srv = srv2;
  process.on('exit', () => rmSync(srv2.dataDir, { recursive: true, force: true }));
  const acks = await Promise.all(queued);
  assert.deepEqual(acks.map((x) => x.seq), [2, 3]);
  await waitFor(() => mb.all.length === 3, 10000, 'the queued messages on the other side');
  assert.deepEqual(mb.bodies(conv), ['before the restart', 'during 1', 'during 2']);
  const page = await b.history(conv);
  assert.equal(page.messages.length, 3);
});

test('a resend after a reconnect never duplicates: same client id, same seq', async () => {
  let first = null;
  let clientId = null;
  const tap = tapSocket({
    outgoing(f) { if (f.op === 'send' && f.body === 'exactly once') clientId = f.id; return false; },
    incoming(f, deliver, sock) {
      // the first socket never sees the ack nor its own msg frame: as if the
      // connection died right after the server committed the message
      if (!first) first = sock;
      return sock === first && clientId && f.id === clientId && (f.op === 'ack' || f.op === 'msg');
    },
  });
  const { a, b, conv } = await pair({ WebSocket: tap.TapSocket });
  const ma = collect(a);
  const mb = collect(b);
  const p = a.send(conv, 'exactly once');
  assert.equal(typeof p.id, 'string');
  await waitFor(() => mb.all.length === 1, 5000, 'B sees the committed message');
  const seq = mb.all[0].seq;
  assert.equal(a.pending(conv).length, 1, 'still unacked on A');
  first.kill(); // the connection drops before the ack arrives

  const ack = await p;
  assert.equal(ack.id, p.id);
  assert.equal(ack.seq, seq, 'the original seq');
  const sends = tap.sent.filter((f) => f.op === 'send');
  assert.ok(sends.length >= 2, 'sent again after the reconnect');
  assert.ok(sends.every((f) => f.id === p.id && f.body === 'exactly once'), 'same client id every time');
  await waitFor(() => ma.all.length === 1, 5000, 'A gets its own message through sync');
  const page = await b.history(conv);
  assert.equal(page.messages.length, 1, 'one message on the server');
  assert.equal(page.messages[0].id, p.id);
  assert.equal(mb.all.length, 1);
  assert.equal(a.pending().length, 0);

  // sends queued while the socket is down go out once when it comes back
  tap.sockets.at(-1).kill();
  const queued = [a.send(conv, 'q1'), a.send(conv, 'q2'), a.send(conv, 'q3')];
  const acks = await Promise.all(queued);
  assert.deepEqual(acks.map((x) => x.seq), [seq + 1, seq + 2, seq + 3]);
  await waitFor(() => mb.all.length === 4, 5000, 'the queued messages');
  assert.deepEqual(mb.bodies(conv), ['exactly once', 'q1', 'q2', 'q3']);
});

test('a silent socket (open but carrying nothing) is found by the client ping and replaced', async () => {
  let dead = null;
  const tap = tapSocket({
    incoming: (f, deliver, sock) => sock === dead,
    outgoing: (f, sock) => sock === dead,
  });
  const { a, b, conv } = await pair({}, { WebSocket: tap.TapSocket, pingIntervalMs: 300, pingTimeoutMs: 300 });
  const mb = collect(b);
  const lost = [];
  b.on('disconnected', (x) => lost.push(x.reason));
  dead = tap.sockets.at(-1); // like a network that went away without a FIN
  await a.send(conv, 'one');
  await a.send(conv, 'two');
  await waitFor(() => mb.all.length === 2, 8000, 'messages after the silent socket was replaced');
  assert.deepEqual(mb.bodies(conv), ['one', 'two']);
  assert.deepEqual(lost, ['timeout']);
  assert.ok(tap.sockets.length >= 2);
  const pings = tap.sent.filter((f) => f.op === 'ping');
  assert.ok(pings.length >= 1, 'probed with a ping first');
});

test('a seq that skips ahead triggers a sync that fills the gap, in order', async () => {
  let dropped = false;
  const tap = tapSocket({
    incoming(f) {
      if (f.op === 'msg' && f.seq === 2 && !dropped) { dropped = true; return true; }
      return false;
    },
  });
  const { a, b, conv } = await pair({}, { WebSocket: tap.TapSocket });
  const mb = collect(b);
  const gaps = [];
  b.on('gap', (g) => gaps.push(g));
  for (let i = 1; i <= 3; i++) await a.send(conv, `m${i}`);
  await waitFor(() => mb.all.length === 3, 5000, 'all three');
  assert.ok(dropped);
  assert.deepEqual(mb.seqs(conv), [1, 2, 3]);
  assert.deepEqual(gaps[0], { conv, have: 1, got: 3 });
  const sync = tap.sent.filter((f) => f.op === 'sync').at(-1);
  assert.equal(sync.since[String(conv)], 1, 'sync from the last seq held');
});

test('out-of-order and repeated frames reach the app once, in seq order', async () => {
  let held = null;
  const tap = tapSocket({
    incoming(f, deliver) {
      if (f.op !== 'msg') return false;
      if (f.seq === 2 && !held) { held = deliver; return true; } // late
      if (f.seq === 4 && held) { deliver(); held(); deliver(); return true; } // 4, then 2, then 4 again
      return false;
    },
  });
  const { a, b, conv } = await pair({}, { WebSocket: tap.TapSocket });
  const mb = collect(b);
  for (let i = 1; i <= 5; i++) await a.send(conv, `m${i}`);
  await waitFor(() => mb.all.length === 5, 5000, 'five messages');
  assert.deepEqual(mb.seqs(conv), [1, 2, 3, 4, 5]);

  // many concurrent senders: every client sees every seq exactly once, in order
  const ma = collect(a);
  const n = 40;
  await Promise.all(Array.from({ length: n }, (_, i) => (i % 2 ? a : b).send(conv, `burst ${i}`)));
  const want = Array.from({ length: n }, (_, i) => 6 + i);
  await waitFor(() => ma.all.length === n && mb.all.length === 5 + n, 10000, 'the burst');
  assert.deepEqual(ma.seqs(conv), want);
  assert.deepEqual(mb.seqs(conv).slice(5), want);
});

test('presence, typing, read receipts and conversation events', async () => {
  const { a, b, conv } = await pair();
  const ev = { presence: [], typing: [], read: [], conversation: [], removed: [] };
  for (const k of Object.keys(ev)) a.on(k, (x) => ev[k].push(x));
  b.typing(conv);
  await waitFor(() => ev.typing.length === 1, 5000, 'typing');
  assert.deepEqual(ev.typing[0], { conv, user: b.user.id });
  const { seq } = await a.send(conv, 'read me');
  await waitFor(() => b.cursor(conv) === seq, 5000, 'B holds the message');
  b.markRead(conv, seq);
  await waitFor(() => ev.read.length === 1, 5000, 'read receipt');
  assert.deepEqual(ev.read[0], { conv, user: b.user.id, seq });
  await waitFor(() => a.isOnline(b.user.id) && b.isOnline(a.user.id), 5000, 'presence of a new contact');
  b.disconnect();
  await waitFor(() => ev.presence.some((p) => p.user === b.user.id && !p.online), 5000, 'B offline');
  assert.equal(a.isOnline(b.user.id), false);
  b.connect();
  await waitFor(() => a.isOnline(b.user.id), 5000, 'B online again');

  // groups: an added member gets a conversation event; a removed one a 'removed'
  const c = track(await signedUp(S.srv, {}, 'c'));
  const cev = { conversation: [], removed: [] };
  c.on('conversation', (x) => cev.conversation.push(x));
  c.on('removed', (x) => cev.removed.push(x));
  const g = await a.createGroup('Weekend plans', [b.user.id]);
  await a.send(g.id, 'before c joined');
  await a.addMember(g.id, c.user.id);
  await waitFor(() => cev.conversation.some((x) => x.id === g.id), 5000, 'C hears of the group');
  const hist = await c.history(g.id);
  assert.deepEqual(hist.messages.map((m) => m.body), ['before c joined']);
  const mc = collect(c);
  await a.send(g.id, 'welcome c');
  await waitFor(() => mc.all.length === 1, 5000, 'C gets live messages');
  assert.equal(mc.all[0].seq, 2);
  await a.removeMember(g.id, c.user.id);
  await waitFor(() => cev.removed.some((x) => x.conv === g.id), 5000, 'C removed');
  assert.equal(c.cursor(g.id), undefined);
  const users = await a.searchUsers(c.user.username);
  assert.equal(users[0].id, c.user.id);
});

test('logout revokes the session and stops the socket', async () => {
  const a = track(await signedUp(S.srv));
  const takenName = a.user.username;
  const sessions = [];
  a.on('session', (u) => sessions.push(u));
  const rt = a.session.refresh_token;
  await a.logout();
  assert.equal(a.state, 'offline');
  assert.equal(a.session, null);
  assert.deepEqual(sessions, [null]);
  const res = await fetch(`${S.srv.url}/api/auth/refresh`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: rt }),
  });
  assert.equal(res.status, 401);
  await assert.rejects(a.conversations(), { code: 'unauthorized' });
  // signing up with a taken name is a clear error
  const dup = track(client(S.srv));
  await assert.rejects(dup.signup({ username: takenName, password: 'password-123' }), { code: 'conflict' });
});
