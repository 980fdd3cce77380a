// Messages over HTTP: send (201, idempotent 200), validation, history paging with
// before / after / newest and has_more, and the read state shown on conversations.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signupMany, uniq, assertError, assertMessage, createGroup, createDirect,
  getConv, postMessage,
} from './helpers.mjs';

let srv;
let a; let b; let x;
before(async () => {
  srv = await startServer();
  [a, b, x] = await signupMany(srv, 3, 'msg');
});
after(async () => { if (srv) await srv.stop(); });

const send = (who, conv, body) => http(srv, 'POST', `/api/conversations/${conv}/messages`, { token: who.token, body });

test('send: 201 message object; then 200 with the original for the same client id', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const id = uniq('cid');
  const t0 = Date.now();
  const r1 = await send(a, g.id, { id, body: 'hello there' });
  assert.equal(r1.status, 201, r1.text);
  assertMessage(r1.body);
  for (const k of ['body', 'conv', 'from', 'id', 'seq', 'ts']) assert.ok(k in r1.body, `message has ${k}`);
  assert.equal(r1.body.conv, g.id);
  assert.equal(r1.body.seq, 1);
  assert.equal(r1.body.from, a.user.id);
  assert.equal(r1.body.id, id);
  assert.equal(r1.body.body, 'hello there');
  assert.ok(Math.abs(r1.body.ts - t0) < 60000, 'ts is ms since the epoch, from the server');

  const r2 = await send(a, g.id, { id, body: 'a different body' });
  assert.equal(r2.status, 200, r2.text);
  assert.deepEqual(r2.body, r1.body, 'the original message');

  // the client id is unique per sender across ALL conversations: the original comes back
  const d = await createDirect(srv, a, b.user.id);
  const r3 = await send(a, d.id, { id, body: 'elsewhere' });
  assert.equal(r3.status, 200, r3.text);
  assert.deepEqual(r3.body, r1.body, 'original conv, seq and ts');
  assert.equal((await getConv(srv, a, d.id)).last_seq, 0, 'no message was created in the other conversation');

  // ... but another sender may use the same client id
  const r4 = await send(b, g.id, { id, body: 'same id, other sender' });
  assert.equal(r4.status, 201, r4.text);
  assert.equal(r4.body.seq, 2);
  assert.equal(r4.body.from, b.user.id);

  const hist = await http(srv, 'GET', `/api/conversations/${g.id}/messages`, { token: b.token });
  assert.deepEqual(hist.body.messages.map((m) => m.seq), [2, 1], 'exactly two messages');
});

test('send: validation errors (empty body, body over 4096 bytes, bad client id, bad JSON)', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  assertError(await send(a, g.id, { id: uniq('c'), body: '' }), 400, 'empty body');
  assertError(await send(a, g.id, { id: uniq('c') }), 400, 'missing body');
  assertError(await send(a, g.id, { id: uniq('c'), body: 17 }), 400, 'numeric body');
  assertError(await send(a, g.id, { body: 'no id' }), 400, 'missing id');
  assertError(await send(a, g.id, { id: '', body: 'empty id' }), 400, 'empty id');
  assertError(await send(a, g.id, { id: 'i'.repeat(129), body: 'long id' }), 400, 'id of 129 characters');
  assertError(await send(a, g.id, { id: 5, body: 'numeric id' }), 400, 'numeric id');
  assertError(await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: a.token, raw: '{"id":"x","body":' }), 400, 'malformed JSON');

  // 4096 bytes after decoding: 2048 two-byte characters pass; one more byte does not
  const fits = 'é'.repeat(2048);
  const ok = await send(a, g.id, { id: uniq('c'), body: fits });
  assert.equal(ok.status, 201, `body of 4096 bytes: ${ok.text.slice(0, 200)}`);
  assert.equal(ok.body.body, fits);
  const over = await send(a, g.id, { id: uniq('c'), body: fits + 'x' });
  assertError(over, 413, 'body of 4097 bytes (2049 characters)');
  assert.equal(over.body.error.message, 'body too large');
  const wayOver = await send(a, g.id, { id: uniq('c'), body: 'x'.repeat(5000) });
  assertError(wayOver, 413, 'body of 5000 bytes');

  const okId = await send(a, g.id, { id: 'i'.repeat(128), body: 'id of 128 characters' });
  assert.equal(okId.status, 201, okId.text);
  const c = await getConv(srv, a, g.id);
  assert.equal(c.last_seq, 2, 'only the two valid messages were stored');
  assertError(await send(a, 987654321, { id: uniq('c'), body: 'nowhere' }), 404, 'unknown conversation');
  assertError(await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { body: { id: uniq('c'), body: 'x' } }), 401, 'no token');
});

test('history: newest first by default, before / after paging with has_more', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const sent = [];
  for (let i = 1; i <= 12; i++) sent.push(await postMessage(srv, i % 2 ? a : b, g.id, `m${i}`));
  assert.deepEqual(sent.map((m) => m.seq), [...Array(12)].map((_, i) => i + 1), 'dense seqs 1..12');
  const get = async (q) => {
    const r = await http(srv, 'GET', `/api/conversations/${g.id}/messages${q}`, { token: b.token });
    assert.equal(r.status, 200, `${q}: ${r.text}`);
    assert.equal(typeof r.body.has_more, 'boolean');
    for (const m of r.body.messages) assertMessage(m);
    return { seqs: r.body.messages.map((m) => m.seq), more: r.body.has_more, msgs: r.body.messages };
  };
  let p = await get('');
  assert.deepEqual(p.seqs, [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
  assert.equal(p.more, false);
  assert.deepEqual(p.msgs[0], sent[11], 'history carries the same message objects');

  p = await get('?limit=5');
  assert.deepEqual(p.seqs, [12, 11, 10, 9, 8]);
  assert.equal(p.more, true);
  p = await get('?before=8&limit=5');
  assert.deepEqual(p.seqs, [7, 6, 5, 4, 3]);
  assert.equal(p.more, true);
  p = await get('?before=3&limit=5');
  assert.deepEqual(p.seqs, [2, 1]);
  assert.equal(p.more, false);
  p = await get('?before=2&limit=1');
  assert.deepEqual(p.seqs, [1]);
  assert.equal(p.more, false, 'nothing older than seq 1');
  p = await get('?before=1');
  assert.deepEqual(p.seqs, []);
  assert.equal(p.more, false);

  p = await get('?after=0&limit=5');
  assert.deepEqual(p.seqs, [1, 2, 3, 4, 5], 'oldest first with after');
  assert.equal(p.more, true);
  p = await get('?after=5&limit=5');
  assert.deepEqual(p.seqs, [6, 7, 8, 9, 10]);
  assert.equal(p.more, true);
  p = await get('?after=10&limit=5');
  assert.deepEqual(p.seqs, [11, 12]);
  assert.equal(p.more, false);
  p = await get('?after=12');
  assert.deepEqual(p.seqs, []);
  assert.equal(p.more, false);
  p = await get('?after=11&limit=1');
  assert.deepEqual(p.seqs, [12]);
  assert.equal(p.more, false);
  assert.deepEqual(p.msgs[0], sent[11]);

  assertError(await http(srv, 'GET', `/api/conversations/${g.id}/messages?before=abc`, { token: b.token }), 400, 'before=abc');
  assertError(await http(srv, 'GET', `/api/conversations/${g.id}/messages?limit=0`, { token: b.token }), 400, 'limit=0');
  assertError(await http(srv, 'GET', `/api/conversations/${g.id}/messages`, { token: x.token }), 404, 'non-member');
  assertError(await http(srv, 'GET', `/api/conversations/${g.id}/messages`), 401, 'no token');
});

test('read state: sending moves the sender\'s read position; others see unread', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  await postMessage(srv, a, g.id, 'one');
  await postMessage(srv, a, g.id, 'two');
  const m3 = await postMessage(srv, a, g.id, 'three');
  const ca = await getConv(srv, a, g.id);
  assert.equal(ca.last_seq, 3);
  assert.equal(ca.last_read_seq, 3, 'sending moves the sender\'s read position to it');
  assert.equal(ca.unread, 0);
  assert.deepEqual(ca.last_message, m3);
  const cb = await getConv(srv, b, g.id);
  assert.equal(cb.last_seq, 3);
  assert.equal(cb.last_read_seq, 0);
  assert.equal(cb.unread, 3);
  await postMessage(srv, b, g.id, 'four');
  const cb2 = await getConv(srv, b, g.id);
  assert.equal(cb2.last_read_seq, 4);
  assert.equal(cb2.unread, 0);
  const ca2 = await getConv(srv, a, g.id);
  assert.equal(ca2.last_read_seq, 3);
  assert.equal(ca2.unread, 1);
});
