// Limits on what fans out (issue 8, items 5 and 6): typing is coalesced per user and
// conversation, a read that does not move the position is dropped (no write, no receipt),
// reads have a bucket per user; the writer's queue is bounded (`unavailable` / 503 +
// Retry-After when full). Absence is proven with a marker that must arrive after, not a sleep.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signupMany, createGroup, openSocket, closeAll, sendMany, collectUntil, uniq, sleep, fullHistory,
} from './helpers.mjs';

test('typing: one fan-out per user and conversation per PARLEY_TYPING_MS', async () => {
  const srv = await startServer({ PARLEY_TYPING_MS: '1500' });
  const [a, b] = await signupMany(srv, 2, 'ty');
  const g = await createGroup(srv, a, [b.user.id]);
  const g2 = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  const cb = await openSocket(srv, b.token);
  try {
    for (let i = 0; i < 5; i++) ca.send({ op: 'typing', conv: g.id });
    ca.send({ op: 'typing', conv: g2.id }); // another conversation: its own interval
    const marker = uniq('mark');
    ca.send({ op: 'send', id: marker, conv: g.id, body: 'marker' });
    const frames = await collectUntil(cb, (f) => f.op === 'msg' && f.id === marker);
    const typing = frames.filter((f) => f.op === 'typing');
    assert.deepEqual(typing.map((f) => [f.conv, f.user]), [[g.id, a.user.id], [g2.id, a.user.id]]);
    await sleep(1600); // the interval has passed: the next one fans out
    ca.send({ op: 'typing', conv: g.id });
    assert.deepEqual(await cb.next('typing'), { op: 'typing', conv: g.id, user: a.user.id });
  } finally {
    await closeAll(ca, cb);
    await srv.stop();
  }
});

test('read: a read that does not move the position is dropped: no write, no receipt', async () => {
  const srv = await startServer();
  const [a, b] = await signupMany(srv, 2, 'rd');
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  const cb = await openSocket(srv, b.token);
  try {
    await sendMany(cb, g.id, 12);
    // moves the position: one receipt
    ca.send({ op: 'read', conv: g.id, seq: 10 });
    assert.deepEqual(await cb.next('read'), { op: 'read', conv: g.id, user: a.user.id, seq: 10 });
    // below and at the position: nothing; then one that moves it
    ca.send({ op: 'read', conv: g.id, seq: 4 });
    ca.send({ op: 'read', conv: g.id, seq: 10 });
    ca.send({ op: 'read', conv: g.id, seq: 11 });
    assert.deepEqual((await collectUntil(cb, 'read')).filter((f) => f.op === 'read').map((f) => f.seq), [11]);
    // a read clamped to last_seq, twice: the second changes nothing
    ca.send({ op: 'read', conv: g.id, seq: 99 });
    ca.send({ op: 'read', conv: g.id, seq: 100 });
    ca.send({ op: 'read', conv: g.id, seq: 12 });
    assert.equal((await cb.next('read')).seq, 12);
    // marker: the next receipt b sees is one that moves the position again
    const m = await cb.sendMsg(g.id, 'thirteen');
    ca.send({ op: 'read', conv: g.id, seq: m.seq });
    const frames = await collectUntil(cb, 'read');
    assert.deepEqual(frames.filter((f) => f.op === 'read').map((f) => f.seq), [13]);
    assert.equal(ca.take('error').length, 0);
  } finally {
    await closeAll(ca, cb);
    await srv.stop();
  }
});

test('read: a bucket per user (PARLEY_READ_RATE / PARLEY_READ_BURST): beyond it, rate_limited', async () => {
  const srv = await startServer({ PARLEY_READ_RATE: '1', PARLEY_READ_BURST: '5' });
  const [a, b] = await signupMany(srv, 2, 'rb');
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  const cb = await openSocket(srv, b.token);
  try {
    await sendMany(cb, g.id, 10);
    for (let s = 1; s <= 10; s++) ca.send({ op: 'read', conv: g.id, seq: s });
    ca.send({ op: 'ping' }); // answered after every read above was admitted or refused
    const errs = (await collectUntil(ca, 'pong')).filter((f) => f.op === 'error');
    assert.equal(errs.length, 5, JSON.stringify(errs));
    for (const e of errs) assert.deepEqual(e, { op: 'error', code: 'rate_limited', message: 'too many reads; slow down' });
    // b got the five that passed, in order
    const seen = [];
    while (seen.length < 5) seen.push((await cb.next('read')).seq);
    assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  } finally {
    await closeAll(ca, cb);
    await srv.stop();
  }
});

test('fan-out to 400 connections while half of them hang up: the rest get every message in order, the server lives', async () => {
  // The worker writes a fan-out FLUSH_SLICE connections per loop iteration and reads in between,
  // so connections close while they wait their turn on the dirty list (conn_free leaves them
  // for the flush pass to free: AddressSanitizer in e2e-asan sees any use after free).
  const srv = await startServer({ PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0', PARLEY_WORKERS: '1' });
  const [a, b] = await signupMany(srv, 2, 'hu');
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  const socks = [];
  for (let i = 0; i < 400; i++) socks.push(await openSocket(srv, b.token));
  try {
    // 200 sends; whenever the last socket gets a tenth message, 10 of the first 200 hang up: they
    // close while the server is in the middle of its fan-out passes
    const ids = [...Array(200)].map((_, i) => `${uniq('h')}-${i}`);
    const pad = 'x'.repeat(2000);
    let hung = 0;
    socks.at(-1).ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      if (f.op !== 'msg' || +f.body.split(' ')[0] % 10 !== 0 || hung >= 200) return;
      for (const s of socks.slice(hung, hung + 10)) s.ws.terminate();
      hung += 10;
    });
    for (const [i, id] of ids.entries()) ca.send({ op: 'send', id, conv: g.id, body: `${i} ${pad}` });
    for (const id of ids) assert.equal((await ca.next((f) => (f.op === 'ack' || f.op === 'error') && f.id === id, 20000)).op, 'ack');
    for (const s of socks.slice(200)) {
      const got = await collectUntil(s, (f) => f.op === 'msg' && f.id === ids.at(-1), 20000);
      assert.deepEqual(got.filter((f) => f.op === 'msg').map((f) => f.id), ids);
    }
    assert.equal((await http(srv, 'GET', '/healthz')).status, 200);
  } finally {
    await closeAll(ca, socks);
    await srv.stop();
  }
});

test('writer: a batch commits once no write came for PARLEY_BATCH_GAP_US, without waiting out the interval', async () => {
  // Three sends back to back, a 1 s interval: with a 2 ms gap the batch commits about 2 ms after
  // the third; with the gap off it waits the whole second (the same server otherwise).
  const ackTime = async (gap) => {
    const srv = await startServer({ PARLEY_BATCH_INTERVAL_MS: '1000', PARLEY_BATCH_GAP_US: gap, PARLEY_SEND_RATE: '0' });
    const [a] = await signupMany(srv, 1, `gap${gap}`);
    const g = await createGroup(srv, a, []);
    const ca = await openSocket(srv, a.token);
    try {
      const ids = [0, 1, 2].map((i) => `${uniq('g')}-${i}`);
      const t0 = Date.now();
      for (const id of ids) ca.send({ op: 'send', id, conv: g.id, body: `m ${id}` });
      for (const id of ids) assert.equal((await ca.next((f) => (f.op === 'ack' || f.op === 'error') && f.id === id, 10000)).op, 'ack');
      const ms = Date.now() - t0;
      const hist = await fullHistory(srv, a, g.id);
      assert.deepEqual(hist.map((m) => m.body), ids.map((id) => `m ${id}`), 'all three stored, in order');
      return ms;
    } finally {
      await closeAll(ca);
      await srv.stop();
    }
  };
  const early = await ackTime('2000');
  assert.ok(early < 900, `acked after ${early} ms: the batch waited for the interval (1000 ms)`);
  const late = await ackTime('0');
  assert.ok(late >= 900, `acked after ${late} ms with the gap off: the interval was not waited out`);
});

test('writer: its queue is bounded; beyond it a send gets unavailable (HTTP 503 + Retry-After)', async () => {
  // a batch waits a whole second to fill, so the queue holds what arrives meanwhile
  // (and no early commit when the senders pause: PARLEY_BATCH_GAP_US=0)
  const srv = await startServer({ PARLEY_WRITER_QUEUE: '4', PARLEY_BATCH_INTERVAL_MS: '1000', PARLEY_BATCH_GAP_US: '0', PARLEY_BATCH_MAX: '1000', PARLEY_SEND_RATE: '0' });
  const [a] = await signupMany(srv, 1, 'wq');
  const g = await createGroup(srv, a, []);
  const ca = await openSocket(srv, a.token);
  try {
    const ids = [...Array(8)].map((_, i) => `${uniq('w')}-${i}`);
    for (const id of ids) ca.send({ op: 'send', id, conv: g.id, body: `m ${id}` });
    const res = [];
    for (const id of ids) res.push(await ca.next((f) => (f.op === 'ack' || f.op === 'error') && f.id === id, 10000));
    assert.deepEqual(res.map((f) => f.op), ['ack', 'ack', 'ack', 'ack', 'error', 'error', 'error', 'error']);
    for (const e of res.slice(4)) assert.deepEqual(e, { op: 'error', id: e.id, code: 'unavailable', message: 'server busy; retry shortly' });
    // over HTTP: fill the queue again, then one more
    const fills = [...Array(4)].map(() => uniq('f'));
    for (const id of fills) ca.send({ op: 'send', id, conv: g.id, body: 'fill' });
    await ca.roundtrip();
    const h = await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: a.token, body: { id: uniq('h'), body: 'http' } });
    assert.equal(h.status, 503, h.text);
    assert.equal(h.body.error.code, 'unavailable');
    assert.equal(h.headers.get('retry-after'), '1');
    for (const id of fills) assert.equal((await ca.next((f) => f.op === 'ack' && f.id === id, 10000)).op, 'ack');
    // a refused id was not used: sent again later, it is stored
    const again = await ca.sendMsg(g.id, 'again', res[4].id, 10000);
    assert.equal(again.op, 'ack', JSON.stringify(again));
  } finally {
    await closeAll(ca);
    await srv.stop();
  }
});
