// Limits: the per-user send rate (token bucket from PARLEY_SEND_RATE / PARLEY_SEND_BURST) on
// the WebSocket and over HTTP, and the WebSocket frame size limit (larger: close 1009).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signupMany, uniq, assertError, createGroup, getConv, openSocket, closeAll, sleep,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ PARLEY_SEND_RATE: '1', PARLEY_SEND_BURST: '3' }); });
after(async () => { if (srv) await srv.stop(); });

test('rate limit: rapid sends beyond the burst get rate_limited (WebSocket and HTTP 429 with Retry-After)', async () => {
  const [r, s] = await signupMany(srv, 2, 'rate');
  const g = await createGroup(srv, r, [s.user.id]);
  const rc = await openSocket(srv, r.token);
  const sc = await openSocket(srv, s.token);
  try {
    const ids = [...Array(10)].map((_, i) => `${uniq('rl')}-${i}`);
    for (const id of ids) rc.send({ op: 'send', id, conv: g.id, body: `burst ${id}` });
    const res = [];
    for (const id of ids) res.push(await rc.next((f) => (f.op === 'ack' || f.op === 'error') && f.id === id, 5000));
    const acks = res.filter((f) => f.op === 'ack');
    const limited = res.filter((f) => f.op === 'error');
    for (const e of limited) {
      assert.equal(e.code, 'rate_limited', JSON.stringify(e));
      assert.equal(typeof e.message, 'string');
    }
    assert.ok(acks.length >= 3, `the burst of 3 is allowed: ${acks.length} acks`);
    assert.ok(acks.length <= 5, `at 1 message/s, 10 rapid sends cannot all pass: ${acks.length} acks`);
    assert.ok(limited.length >= 5, `rate_limited errors: ${limited.length}`);
    assert.deepEqual(acks.map((a) => a.seq), acks.map((_, i) => i + 1), 'refused sends use no seq');

    // the bucket is per user and shared by HTTP
    const h = await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: r.token, body: { id: uniq('h'), body: 'http too' } });
    assertError(h, 429, 'HTTP send while limited');
    const ra = h.headers.get('retry-after');
    assert.ok(ra !== null && /^\d+$/.test(ra.trim()) && +ra >= 1, `Retry-After: ${ra}`);

    // another user is not limited by r's bucket
    const other = await sc.sendMsg(g.id, 'not limited');
    assert.equal(other.op, 'ack', JSON.stringify(other));

    // nothing refused was stored
    const c = await getConv(srv, s, g.id);
    assert.equal(c.last_seq, acks.length + 1);

    // the bucket refills at 1 message per second
    await sleep(2100);
    const later = await rc.sendMsg(g.id, 'after a pause');
    assert.equal(later.op, 'ack', `a send after the bucket refilled: ${JSON.stringify(later)}`);
    // a limited id can be retried later (it was not used)
    const retry = await rc.sendMsg(g.id, 'retry', limited[0].id);
    if (retry.op === 'error') assert.equal(retry.code, 'rate_limited');
    else assert.equal(retry.seq, later.seq + 1, 'a new message for a previously refused id');
  } finally { await closeAll(rc, sc); }
});

test('frames: a 60 KiB frame is served (body too large); a frame over 64 KiB closes with 1009', async () => {
  const [f, o] = await signupMany(srv, 2, 'frame');
  const g = await createGroup(srv, f, [o.user.id]);
  const conn = await openSocket(srv, f.token);
  try {
    conn.send({ op: 'send', id: 'big-ok', conv: g.id, body: 'x'.repeat(60 * 1024) });
    const e = await conn.next((x) => x.op === 'error' && x.id === 'big-ok', 5000);
    assert.deepEqual(e, { op: 'error', id: 'big-ok', code: 'too_large', message: 'body too large' });
    await conn.roundtrip();
    assert.ok(conn.isOpen, 'a frame under 64 KiB does not close the connection');

    conn.send({ op: 'send', id: 'huge', conv: g.id, body: 'y'.repeat(64 * 1024 + 512) });
    const info = await conn.waitClosed(5000);
    assert.equal(info.code, 1009, `close code for a frame over 64 KiB: ${JSON.stringify(info)}`);
    assert.ok(!conn.log.some((x) => x.op === 'ack'), 'nothing was stored');
    assert.equal((await getConv(srv, f, g.id)).last_seq, 0);
  } finally { await conn.close(); }
});
