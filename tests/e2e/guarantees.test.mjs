// Delivery guarantees under load: dense per-conversation seqs, per-connection order, acks that
// match what every member receives, and catch-up by sync after being offline.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, assertHas, signupMany, createGroup, openSocket, closeAll, sendMany, collectUntil, fullHistory, uniq,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer(); });
after(async () => { if (srv) await srv.stop(); });

const range = (from, to) => [...Array(to - from + 1)].map((_, i) => from + i);

test('1,000 messages from 5 concurrent senders: every member connection gets seqs 1..1000 in order, matching the acks', async () => {
  const SENDERS = 5;
  const EACH = 200;
  const TOTAL = SENDERS * EACH;
  const users = await signupMany(srv, SENDERS + 1, 'load');
  const senders = users.slice(0, SENDERS);
  const reader = users[SENDERS];
  const g = await createGroup(srv, senders[0], users.slice(1).map((u) => u.user.id));
  const sConns = [];
  const conns = [];
  try {
    for (const s of senders) sConns.push(await openSocket(srv, s.token));
    const r1 = await openSocket(srv, reader.token);
    const r2 = await openSocket(srv, reader.token, { via: 'query' });
    conns.push(...sConns, r1, r2);

    // every connection starts collecting msgs of the group right away
    const receiving = conns.map(async (c) => {
      const got = [];
      while (got.length < TOTAL) got.push(await c.next((f) => f.op === 'msg' && f.conv === g.id, 30000));
      return got;
    });
    const acksPer = await Promise.all(sConns.map((c, i) => sendMany(c, g.id, EACH, {
      prefix: `s${i}-${uniq('')}`, timeoutMs: 30000, body: (k) => `sender ${i} message ${k}`,
    })));

    // acks: dense 1..1000 overall, increasing per connection in send order
    const allSeqs = acksPer.flat().map((a) => a.seq).sort((x, y) => x - y);
    assert.deepEqual(allSeqs, range(1, TOTAL), 'acked seqs are exactly 1..1000');
    acksPer.forEach((acks, i) => {
      for (let k = 1; k < acks.length; k++) assert.ok(acks[k].seq > acks[k - 1].seq, `sender ${i}: seqs in send order`);
    });
    const bySeq = new Map();
    acksPer.forEach((acks, i) => acks.forEach((a, k) => bySeq.set(a.seq, { ...a, from: senders[i].user.id, body: `sender ${i} message ${k}` })));

    const received = await Promise.all(receiving);
    received.forEach((msgs, ci) => {
      assert.deepEqual(msgs.map((m) => m.seq), range(1, TOTAL), `connection ${ci}: msgs arrive in seq order 1..1000`);
      for (const m of msgs) {
        const a = bySeq.get(m.seq);
        if (m.id !== a.id || m.from !== a.from || m.body !== a.body || m.ts !== a.ts) {
          assert.fail(`connection ${ci}: msg ${JSON.stringify(m)} does not match ack ${JSON.stringify(a)}`);
        }
      }
    });
    for (const c of conns) {
      await c.roundtrip();
      assert.equal(c.log.filter((f) => f.op === 'msg' && f.conv === g.id).length, TOTAL, 'no duplicates');
    }

    const hist = await fullHistory(srv, reader, g.id);
    assert.deepEqual(hist.map((m) => m.seq), range(1, TOTAL), 'history has every seq once');
  } finally { await closeAll(conns.length ? conns : sConns); }
});

// The worker copies frames up to 1 KiB into a per-connection chunk of 8 KiB and queues bigger
// ones by reference (worker.c, enqueue): bodies of every size, sent without waiting, cross both
// kinds and the chunk boundaries, and must still arrive whole, once and in order.
test('120 messages of 1 byte to 4 KiB, sent at once: each member connection gets every body whole and in order', async () => {
  const sizes = [1, 300, 900, 1000, 1100, 2500, 4000, 4096, 60, 8];
  const body = (k) => `${k}:`.padEnd(sizes[k % sizes.length], String.fromCharCode(97 + (k % 26)));
  const [a, b] = await signupMany(srv, 2, 'sz');
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  const cb = await openSocket(srv, b.token);
  const cb2 = await openSocket(srv, b.token, { via: 'query' });
  try {
    const N = 120;
    const receiving = [ca, cb, cb2].map(async (c) => {
      const got = [];
      while (got.length < N) got.push(await c.next((f) => f.op === 'msg' && f.conv === g.id, 30000));
      return got;
    });
    const acks = await sendMany(ca, g.id, N, { prefix: uniq('sz'), timeoutMs: 30000, body });
    assert.deepEqual(acks.map((x) => x.seq), range(1, N));
    for (const [ci, msgs] of (await Promise.all(receiving)).entries()) {
      assert.deepEqual(msgs.map((m) => m.seq), range(1, N), `connection ${ci}: in seq order`);
      msgs.forEach((m, k) => assert.equal(m.body, body(k), `connection ${ci}: body ${k} whole`));
    }
  } finally { await closeAll(ca, cb, cb2); }
});

test('a member offline while 200 messages were sent gets all 200 in order after reconnect + sync', async () => {
  const [a, b] = await signupMany(srv, 2, 'off');
  const g = await createGroup(srv, a, [b.user.id]);
  const a1 = await openSocket(srv, a.token);
  let b1 = await openSocket(srv, b.token);
  try {
    await a1.sendMsg(g.id, 'before');
    const m1 = await b1.next('msg');
    assert.equal(m1.seq, 1);
    await b1.close();
    const acks = await sendMany(a1, g.id, 200);
    b1 = await openSocket(srv, b.token);
    b1.send({ op: 'sync', since: { [g.id]: m1.seq } });
    const frames = await collectUntil(b1, 'synced', 10000);
    const msgs = frames.filter((f) => f.op === 'msg' && f.conv === g.id);
    assert.equal(msgs.length, 200);
    assert.deepEqual(msgs.map((m) => m.seq), range(2, 201));
    assert.deepEqual(msgs.map((m) => [m.seq, m.id, m.ts]), acks.map((x) => [x.seq, x.id, x.ts]));
    const s = frames[frames.length - 1].conversations.find((c) => c.conv === g.id);
    assertHas(s, { conv: g.id, last_seq: 201, last_read_seq: 0, unread: 201 }, 'synced entry');
    // live delivery continues after the sync
    const ack = await a1.sendMsg(g.id, 'after');
    const live = await b1.next((f) => f.op === 'msg' && f.id === ack.id);
    assert.equal(live.seq, 202);
  } finally { await closeAll(a1, b1); }
});

test('sync sends at most 200 msgs per conversation; a client that syncs again from what it holds gets the rest', async () => {
  const [a, b] = await signupMany(srv, 2, 'big');
  const g = await createGroup(srv, a, [b.user.id]);
  const a1 = await openSocket(srv, a.token);
  try { await sendMany(a1, g.id, 260); } finally { await a1.close(); }
  const b1 = await openSocket(srv, b.token);
  try {
    let held = 0;
    const got = [];
    for (let round = 0; round < 10; round++) {
      b1.send({ op: 'sync', since: { [g.id]: held } });
      const frames = await collectUntil(b1, 'synced', 10000);
      const msgs = frames.filter((f) => f.op === 'msg' && f.conv === g.id);
      assert.ok(msgs.length <= 200, `at most 200 msgs per conversation in one sync answer: ${msgs.length}`);
      assert.deepEqual(msgs.map((m) => m.seq), range(held + 1, held + msgs.length), 'oldest first, from since + 1');
      got.push(...msgs);
      if (msgs.length) held = msgs[msgs.length - 1].seq;
      const s = frames[frames.length - 1].conversations.find((c) => c.conv === g.id);
      assert.equal(s.last_seq, 260);
      if (held === s.last_seq) break;
      assert.ok(msgs.length > 0, 'a sync behind last_seq makes progress');
    }
    assert.deepEqual(got.map((m) => m.seq), range(1, 260));
  } finally { await b1.close(); }
});
