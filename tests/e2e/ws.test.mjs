// The WebSocket protocol: authentication styles, hello, send/ack/msg fan-out, idempotent
// resend, sync, read receipts, typing, ping, presence, re-authentication and bad frames.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signup, signupMany, uniq, assertUser, assertMessage, createGroup, createDirect,
  getConv, postMessage, openSocket, rawSocket, closeAll, sendMany, collectUntil, assertHas, pick, MSG_KEYS,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer(); });
after(async () => { if (srv) await srv.stop(); });

function assertHello(hello, user) {
  assert.equal(hello.op, 'hello');
  assertUser(hello.user, 'hello.user');
  assert.deepEqual(hello.user, user);
  assert.ok(Number.isSafeInteger(hello.heartbeat_ms) && hello.heartbeat_ms > 0, `heartbeat_ms: ${hello.heartbeat_ms}`);
}

// -------------------------------------------------------------- authentication
test('hello after Authorization header auth, as the first frame', async () => {
  const a = await signup(srv, { prefix: 'hello' });
  const conn = await openSocket(srv, a.token, { via: 'header' });
  try {
    assertHello(conn.hello, a.user);
    assert.equal(conn.log[0].op, 'hello', 'hello is the first frame');
  } finally { await conn.close(); }
});

test('hello after ?token= auth and after first-frame auth', async () => {
  const a = await signup(srv, { prefix: 'hello' });
  const q = await openSocket(srv, a.token, { via: 'query' });
  const f = await openSocket(srv, a.token, { via: 'frame' });
  try {
    assertHello(q.hello, a.user);
    assertHello(f.hello, a.user);
    assert.equal(q.log[0].op, 'hello');
    assert.equal(f.log[0].op, 'hello');
    await q.roundtrip();
    await f.roundtrip();
  } finally { await closeAll(q, f); }
});

test('a first frame that is not auth closes with 4001', async () => {
  for (const first of [{ op: 'ping' }, { op: 'send', id: 'x', conv: 1, body: 'hi' }, 'not json at all', { op: 'auth' }, { op: 'auth', token: 42 }]) {
    const conn = await rawSocket(srv);
    assert.ok(conn.isOpen, 'an upgrade without credentials is accepted (auth frame expected)');
    conn.send(first);
    const info = await conn.waitClosed(5000).catch(async (e) => { await conn.close(); throw e; });
    assert.deepEqual([info.code, info.reason], [4001, 'expected an auth frame first'], `first frame ${JSON.stringify(first)}`);
    assert.deepEqual(conn.log, [], 'nothing served before auth');
  }
});

// -------------------------------------------------------------- send / ack / msg
test('send: ack to the sender, msg to every connection of every member (sender included), not to others', async () => {
  const [a, b, c] = await signupMany(srv, 3, 'fan');
  const g = await createGroup(srv, a, [b.user.id]);
  const a1 = await openSocket(srv, a.token);
  const a2 = await openSocket(srv, a.token, { via: 'query' });
  const b1 = await openSocket(srv, b.token);
  const b2 = await openSocket(srv, b.token, { via: 'frame' });
  const c1 = await openSocket(srv, c.token);
  try {
    const id = uniq('c');
    const t0 = Date.now();
    const ack = await a1.sendMsg(g.id, 'fan-out ✓', id);
    assert.equal(ack.op, 'ack', JSON.stringify(ack));
    for (const k of ['conv', 'id', 'op', 'seq', 'ts']) assert.ok(k in ack, `ack has ${k}`);
    assert.equal(ack.id, id);
    assert.equal(ack.conv, g.id);
    assert.equal(ack.seq, 1);
    assert.ok(Number.isSafeInteger(ack.ts) && Math.abs(ack.ts - t0) < 60000);
    const want = { op: 'msg', conv: g.id, seq: 1, from: a.user.id, id, body: 'fan-out ✓', ts: ack.ts };
    for (const [name, conn] of Object.entries({ a1, a2, b1, b2 })) {
      const m = await conn.next((f) => f.op === 'msg' && f.id === id, 5000);
      assertMessage(m, `msg on ${name}`);
      assertHas(m, want, `msg on ${name}`);
    }
    // a's next message, to a conversation c is in, is published by the writer after the
    // first one: had c1 been given the first, it would have come before this marker
    const ac = await createDirect(srv, a, c.user.id);
    const mark = await a1.sendMsg(ac.id, 'marker');
    assert.equal(mark.op, 'ack');
    const toC = await collectUntil(c1, (f) => f.op === 'msg' && f.id === mark.id);
    assert.deepEqual(toC.filter((f) => f.op === 'msg' && f.conv === g.id), [], 'a non-member gets no msg');
    await a1.next((f) => f.op === 'msg' && f.id === mark.id);
    await a2.next((f) => f.op === 'msg' && f.id === mark.id);
    // the same message in HTTP history
    const hist = await http(srv, 'GET', `/api/conversations/${g.id}/messages`, { token: b.token });
    assert.equal(hist.body.messages.length, 1);
    assert.deepEqual(pick(hist.body.messages[0], MSG_KEYS), pick(want, MSG_KEYS));

    // and HTTP sends are delivered on the sockets too
    const posted = await postMessage(srv, b, g.id, 'via http');
    for (const conn of [a1, a2, b1, b2]) {
      const m = await conn.next((f) => f.op === 'msg' && f.id === posted.id, 5000);
      assertHas(m, { op: 'msg', ...pick(posted, MSG_KEYS) }, 'msg of an HTTP send');
    }
  } finally { await closeAll(a1, a2, b1, b2, c1); }
});

test('send: an idempotent resend gets the original ack and creates no second msg', async () => {
  const [a, b] = await signupMany(srv, 2, 'idem');
  const g = await createGroup(srv, a, [b.user.id]);
  const d = await createDirect(srv, a, b.user.id);
  const a1 = await openSocket(srv, a.token);
  const b1 = await openSocket(srv, b.token);
  try {
    const id = uniq('c');
    const ack1 = await a1.sendMsg(g.id, 'once', id);
    assert.equal(ack1.op, 'ack');
    await b1.next((f) => f.op === 'msg' && f.id === id);
    const ack2 = await a1.sendMsg(g.id, 'once', id);
    assert.deepEqual(ack2, ack1, 'same ack (conv, seq, ts)');
    const ack3 = await a1.sendMsg(d.id, 'whatever it carries', id);
    assert.deepEqual(ack3, ack1, 'original ack even for another conversation and body');
    // a resend over HTTP with the same client id gives the original too
    const h = await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: a.token, body: { id, body: 'http' } });
    assert.equal(h.status, 200, h.text);
    assert.equal(h.body.seq, ack1.seq);

    const next = await a1.sendMsg(g.id, 'second', uniq('c'));
    assert.equal(next.seq, ack1.seq + 1, 'no seq was used by the resends');
    await b1.next((f) => f.op === 'msg' && f.id === next.id);
    await b1.roundtrip();
    assert.equal(b1.log.filter((f) => f.op === 'msg' && f.id === id).length, 1, 'exactly one msg for the id');
    assert.equal(b1.log.filter((f) => f.op === 'msg' && f.conv === d.id).length, 0, 'nothing in the other conversation');
    assert.equal((await getConv(srv, b, d.id)).last_seq, 0);
  } finally { await closeAll(a1, b1); }
});

test('send: errors echo the id (not a member, empty body, body over 4096 bytes, bad fields); socket stays usable', async () => {
  const [a, b, x] = await signupMany(srv, 3, 'serr');
  const g = await createGroup(srv, a, [b.user.id]);
  const other = await createGroup(srv, x, []);
  const conn = await openSocket(srv, a.token);
  try {
    let e = await conn.sendMsg(other.id, 'intrusion', 'e1');
    assert.deepEqual([e.op, e.id, e.code], ['error', 'e1', 'not_found'], JSON.stringify(e));
    assert.equal(typeof e.message, 'string');
    e = await conn.sendMsg(987654321, 'nowhere', 'e2');
    assert.deepEqual([e.op, e.id, e.code], ['error', 'e2', 'not_found'], JSON.stringify(e));
    e = await conn.sendMsg(g.id, '', 'e3');
    assert.deepEqual([e.op, e.id, e.code], ['error', 'e3', 'bad_request'], JSON.stringify(e));
    e = await conn.sendMsg(g.id, 'é'.repeat(2048) + 'x', 'e4');
    assert.deepEqual(e, { op: 'error', id: 'e4', code: 'too_large', message: 'body too large' }, 'body of 4097 bytes');
    conn.send({ op: 'send', id: 'e5', conv: g.id });
    e = await conn.next((f) => f.op === 'error' && f.id === 'e5');
    assert.equal(e.code, 'bad_request', 'missing body');
    conn.send({ op: 'send', id: 'e6', conv: 'abc', body: 'x' });
    e = await conn.next((f) => f.op === 'error' && f.id === 'e6');
    assert.equal(e.code, 'bad_request', 'bad conv');
    conn.send({ op: 'send', conv: g.id, body: 'no id' });
    e = await conn.next('error');
    assert.equal(e.code, 'bad_request', 'missing id');

    const ok = await conn.sendMsg(g.id, 'é'.repeat(2048), 'ok1');
    assert.equal(ok.op, 'ack', 'body of exactly 4096 bytes');
    assert.equal(ok.seq, 1, 'no seq was spent on refused sends');
    assert.equal((await getConv(srv, x, other.id)).last_seq, 0);
  } finally { await conn.close(); }
});

test('send: sends on one connection get seqs in the order they were sent', async () => {
  const [a, b] = await signupMany(srv, 2, 'ord');
  const g = await createGroup(srv, a, [b.user.id]);
  const a1 = await openSocket(srv, a.token);
  const b1 = await openSocket(srv, b.token);
  try {
    const acks = await sendMany(a1, g.id, 60);
    assert.deepEqual(acks.map((x) => x.seq), [...Array(60)].map((_, i) => i + 1));
    const seen = [];
    while (seen.length < 60) seen.push(await b1.next('msg'));
    assert.deepEqual(seen.map((m) => m.seq), acks.map((x) => x.seq), 'msgs in increasing seq order');
    assert.deepEqual(seen.map((m) => m.id), acks.map((x) => x.id));
  } finally { await closeAll(a1, b1); }
});

// -------------------------------------------------------------- sync
test('sync: missed msgs oldest first, then synced for ALL conversations; absent and foreign ones get no msgs', async () => {
  const [a, b, x] = await signupMany(srv, 3, 'sync');
  const g1 = await createGroup(srv, a, [b.user.id], 'g1');
  const g2 = await createGroup(srv, a, [b.user.id], 'g2');
  const g3 = await createGroup(srv, a, [b.user.id], 'g3');
  const foreign = await createGroup(srv, a, [x.user.id], 'not b');
  for (let i = 1; i <= 5; i++) await postMessage(srv, a, g1.id, `g1-${i}`);
  for (let i = 1; i <= 3; i++) await postMessage(srv, a, g2.id, `g2-${i}`);
  for (let i = 1; i <= 2; i++) await postMessage(srv, a, g3.id, `g3-${i}`);
  await postMessage(srv, b, g3.id, 'g3-by-b');
  for (let i = 1; i <= 2; i++) await postMessage(srv, a, foreign.id, `f-${i}`);

  const conn = await openSocket(srv, b.token);
  try {
    await conn.roundtrip();
    conn.take(() => true); // presence etc.
    conn.send({ op: 'sync', since: { [g1.id]: 2, [g2.id]: 0, [foreign.id]: 0, 987654321: 0 } });
    const frames = await collectUntil(conn, 'synced');
    const msgs = frames.filter((f) => f.op === 'msg');
    assert.equal(frames.filter((f) => f.op !== 'msg' && f.op !== 'synced' && f.op !== 'presence').length, 0, JSON.stringify(frames));
    for (const m of msgs) assertMessage(m);
    const of = (conv) => msgs.filter((m) => m.conv === conv);
    assert.deepEqual(of(g1.id).map((m) => m.seq), [3, 4, 5], 'g1 after 2, oldest first');
    assert.deepEqual(of(g1.id).map((m) => m.body), ['g1-3', 'g1-4', 'g1-5']);
    assert.deepEqual(of(g2.id).map((m) => m.seq), [1, 2, 3]);
    assert.equal(of(g3.id).length, 0, 'no msgs for a conversation absent from since');
    assert.equal(of(foreign.id).length, 0, 'no msgs for a conversation the user is not in');
    assert.equal(msgs.length, 6);

    const synced = frames[frames.length - 1];
    assert.ok(Array.isArray(synced.conversations));
    const byConv = new Map(synced.conversations.map((c) => [c.conv, c]));
    assert.deepEqual([...byConv.keys()].sort((p, q) => p - q), [g1.id, g2.id, g3.id].sort((p, q) => p - q), 'ALL of b\'s conversations, and only those');
    assertHas(byConv.get(g1.id), { conv: g1.id, last_seq: 5, last_read_seq: 0, unread: 5 });
    assertHas(byConv.get(g2.id), { conv: g2.id, last_seq: 3, last_read_seq: 0, unread: 3 });
    assertHas(byConv.get(g3.id), { conv: g3.id, last_seq: 3, last_read_seq: 3, unread: 0 });

    // up to date: nothing but synced; empty since: nothing but synced
    conn.send({ op: 'sync', since: { [g1.id]: 5, [g2.id]: 3 } });
    let again = await collectUntil(conn, 'synced');
    assert.deepEqual(again.filter((f) => f.op === 'msg'), []);
    conn.send({ op: 'sync', since: {} });
    again = await collectUntil(conn, 'synced');
    assert.deepEqual(again.filter((f) => f.op === 'msg'), []);
    assert.equal(again[again.length - 1].conversations.length, 3);
  } finally { await conn.close(); }
});

test('sync: malformed since is an error frame, the connection stays usable', async () => {
  const a = await signup(srv, { prefix: 'syncbad' });
  const conn = await openSocket(srv, a.token);
  try {
    conn.send({ op: 'sync', since: [1, 2] });
    const e = await conn.next('error');
    assert.deepEqual(e, { op: 'error', code: 'bad_request', message: 'since must be an object of conversation id -> seq' });
    await conn.roundtrip();
  } finally { await conn.close(); }
});

// -------------------------------------------------------------- read receipts
test('read: other connections (own and other members) get it, the sending connection does not', async () => {
  const [a, b, c] = await signupMany(srv, 3, 'read');
  const g = await createGroup(srv, a, [b.user.id]);
  for (let i = 0; i < 5; i++) await postMessage(srv, a, g.id, `r${i}`);
  const b1 = await openSocket(srv, b.token);
  const b2 = await openSocket(srv, b.token);
  const a1 = await openSocket(srv, a.token);
  const c1 = await openSocket(srv, c.token);
  try {
    b1.send({ op: 'read', conv: g.id, seq: 3 });
    const want = { op: 'read', conv: g.id, user: b.user.id, seq: 3 };
    assertHas(await b2.next('read'), want, "the reader's other connection");
    assertHas(await a1.next('read'), want, 'another member');
    // the read frame is fanned out once the position is committed (ARCHITECTURE: read
    // receipts go out after the JOB_READ commit): HTTP shows it now, no waiting
    const cv = await getConv(srv, b, g.id);
    assert.equal(cv.last_read_seq, 3, 'HTTP shows the position once the read frame is out');
    assert.equal(cv.unread, 2);
    // the read's publication is out (b2 and a1 have it): a writer round trip on b1 and
    // on c1 comes after anything it would have brought them
    await b1.barrier();
    await c1.barrier();
    assert.deepEqual(b1.log.filter((f) => f.op === 'read'), [], 'the sending connection gets no read frame');
    assert.deepEqual(c1.log.filter((f) => f.op === 'read'), [], 'a non-member gets no read frame');
  } finally { await closeAll(a1, b1, b2, c1); }
});

test('read: positions only move forward and are clamped to last_seq', async () => {
  const [a, b] = await signupMany(srv, 2, 'readfw');
  const g = await createGroup(srv, a, [b.user.id]);
  for (let i = 0; i < 4; i++) await postMessage(srv, a, g.id, `r${i}`);
  const b1 = await openSocket(srv, b.token);
  const a1 = await openSocket(srv, a.token);
  try {
    b1.send({ op: 'read', conv: g.id, seq: 3 });
    assert.equal((await a1.next('read')).seq, 3);
    // below the position: nothing is written, nothing announced (the next read frame a1
    // gets, below, is the one of the read that moves the position again)
    b1.send({ op: 'read', conv: g.id, seq: 1 });
    await b1.roundtrip();
    assert.deepEqual(b1.take('error'), []);
    let cv = await getConv(srv, b, g.id);
    assert.equal(cv.last_read_seq, 3, 'the stored position is 3');
    assert.equal(cv.unread, 1);

    b1.send({ op: 'read', conv: g.id, seq: 1000 });
    const f = await a1.next('read');
    assert.equal(f.seq, 4, 'clamped to last_seq in the read frame; nothing came for the read of 1');
    cv = await getConv(srv, b, g.id); // committed before the read frame went out
    assert.equal(cv.last_read_seq, 4, 'clamped to last_seq over HTTP');
    assert.equal(cv.unread, 0);

    // a read for a conversation the user is not in changes nothing for anybody
    const other = await createGroup(srv, a, []);
    b1.send({ op: 'read', conv: other.id, seq: 1 });
    // refused in the write transaction: nothing was stored, so nothing is announced
    assert.deepEqual(await b1.next('error'), { op: 'error', code: 'not_found', message: 'no such conversation' });
    await a1.roundtrip();
    assert.ok(!a1.log.some((x) => x.op === 'read' && x.conv === other.id), 'no read frame for a foreign conversation');
  } finally { await closeAll(a1, b1); }
});

test('read: a WebSocket send moves the sender\'s read position', async () => {
  const [a, b] = await signupMany(srv, 2, 'readsnd');
  const g = await createGroup(srv, a, [b.user.id]);
  await postMessage(srv, a, g.id, 'one');
  await postMessage(srv, a, g.id, 'two');
  const b1 = await openSocket(srv, b.token);
  try {
    const ack = await b1.sendMsg(g.id, 'reply');
    assert.equal(ack.seq, 3);
    // the position moves in the message's transaction: committed before the ack
    const cv = await getConv(srv, b, g.id);
    assert.equal(cv.last_read_seq, 3, 'sender read position moved to its message');
    assert.equal(cv.unread, 0);
    assert.equal((await getConv(srv, a, g.id)).unread, 1);
  } finally { await b1.close(); }
});

// -------------------------------------------------------------- typing, ping
test('typing: other members get it; non-members neither get nor send it', async () => {
  const [a, b, c] = await signupMany(srv, 3, 'typ');
  const g = await createGroup(srv, a, [b.user.id]);
  const a1 = await openSocket(srv, a.token);
  const b1 = await openSocket(srv, b.token);
  const c1 = await openSocket(srv, c.token);
  try {
    const ac = await createDirect(srv, a, c.user.id); // for a marker c does receive
    a1.send({ op: 'typing', conv: g.id });
    assertHas(await b1.next('typing'), { op: 'typing', conv: g.id, user: a.user.id }, 'typing');
    // a's message to c comes after any typing of a's (typing goes out at once, a message
    // after its commit): c saw none before it
    const mark = uniq('mk');
    a1.send({ op: 'send', id: mark, conv: ac.id, body: 'marker' });
    const toC = await collectUntil(c1, (x) => x.op === 'msg' && x.id === mark);
    assert.deepEqual(toC.filter((x) => x.op === 'typing'), [], 'a non-member gets no typing');
    c1.send({ op: 'typing', conv: g.id });
    assert.deepEqual(await c1.next('error'), { op: 'error', code: 'not_found', message: 'no such conversation' });
    // refused before any fan-out; b's next typing is a's next one, not c's
    const mark2 = uniq('mk');
    a1.send({ op: 'send', id: mark2, conv: g.id, body: 'marker' });
    const toB = await collectUntil(b1, (x) => x.op === 'msg' && x.id === mark2);
    assert.ok(!toB.some((x) => x.op === 'typing' && x.user === c.user.id), 'a non-member cannot type into a conversation');
  } finally { await closeAll(a1, b1, c1); }
});

test('ping gets pong', async () => {
  const a = await signup(srv, { prefix: 'ping' });
  const conn = await openSocket(srv, a.token);
  try {
    conn.send({ op: 'ping' });
    assert.equal((await conn.next('pong')).op, 'pong');
    for (let i = 0; i < 3; i++) await conn.roundtrip();
  } finally { await conn.close(); }
});

// -------------------------------------------------------------- presence
test('presence: online/offline to users who share a conversation, not to others', async () => {
  const [a, b, c] = await signupMany(srv, 3, 'pres');
  await createDirect(srv, a, b.user.id);
  const b1 = await openSocket(srv, b.token);
  const c1 = await openSocket(srv, c.token);
  try {
    const a1 = await openSocket(srv, a.token);
    const on = await b1.next((f) => f.op === 'presence' && f.user === a.user.id);
    assertHas(on, { op: 'presence', user: a.user.id, online: true }, 'presence online');
    const initial = await a1.next((f) => f.op === 'presence' && f.user === b.user.id);
    assertHas(initial, { op: 'presence', user: b.user.id, online: true }, 'after hello: presence of online contacts');
    await a1.roundtrip();
    assert.ok(!a1.log.some((f) => f.op === 'presence' && f.user === c.user.id), 'no presence of a non-contact');

    await a1.close();
    const off = await b1.next((f) => f.op === 'presence' && f.user === a.user.id, 5000);
    assertHas(off, { op: 'presence', user: a.user.id, online: false }, 'presence offline');
    // b1 has the offline frame, so the publication is out: a writer round trip on c1
    // comes after anything it would have brought
    await c1.barrier();
    assert.ok(!c1.log.some((f) => f.op === 'presence' && f.user === a.user.id), 'no presence to a user sharing no conversation');
  } finally { await closeAll(b1, c1); }
});

// -------------------------------------------------------------- auth on an open connection
test('auth on an open socket: new hello; another user\'s token is forbidden; a bad token closes 4001', async () => {
  const [a, b] = await signupMany(srv, 2, 'reauth');
  const conn = await openSocket(srv, a.token);
  try {
    const r = await http(srv, 'POST', '/api/auth/refresh', { body: { refresh_token: a.refresh_token } });
    assert.equal(r.status, 200, r.text);
    conn.send({ op: 'auth', token: r.body.access_token });
    const hello = await conn.next('hello');
    assertHello(hello, a.user);

    conn.send({ op: 'auth', token: b.token });
    const e = await conn.next('error');
    assert.equal(e.code, 'forbidden', JSON.stringify(e));
    await conn.roundtrip();
    assert.ok(conn.isOpen, 'still open after a forbidden re-auth');
    assert.equal(conn.log.filter((f) => f.op === 'hello').length, 2, 'no hello for the other user');
    // still a's connection: an own message comes back from a
    const g = await createGroup(srv, a, []);
    const ack = await conn.sendMsg(g.id, 'still me');
    assert.equal(ack.op, 'ack');
    const m = await conn.next('msg');
    assert.equal(m.from, a.user.id);

    conn.send({ op: 'auth', token: 'definitely.not.valid' });
    const info = await conn.waitClosed(5000);
    assert.equal(info.code, 4001);
  } finally { await conn.close(); }
});

// -------------------------------------------------------------- bad frames
test('malformed JSON, non-object frames and unknown ops get error bad_request; the socket stays usable', async () => {
  const a = await signup(srv, { prefix: 'bad' });
  const conn = await openSocket(srv, a.token);
  try {
    for (const raw of ['{not json', '[1,2,3]', '"just a string"', '42', 'null', JSON.stringify({ op: 'teleport' }), JSON.stringify({ noop: 1 }), JSON.stringify({ op: 7 })]) {
      conn.send(raw);
      const e = await conn.next('error', 5000);
      assert.equal(e.code, 'bad_request', `${raw}: ${JSON.stringify(e)}`);
      assert.equal(typeof e.message, 'string');
      const p = await conn.roundtrip();
      assert.equal(p.op, 'pong', `usable after ${raw}`);
    }
    assert.ok(conn.isOpen);
  } finally { await conn.close(); }
});
