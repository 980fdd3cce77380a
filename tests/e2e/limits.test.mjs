// Limits: the per-user send rate (token bucket from PARLEY_SEND_RATE / PARLEY_SEND_BURST) on
// the WebSocket and over HTTP, and the WebSocket frame size limit (larger: close 1009).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signupMany, uniq, assertError, createGroup, getConv, openSocket, closeAll, sleep,
} from './helpers.mjs';
import { rawWebSocket } from './abuse.mjs';

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
    // ten frames in one burst, read in order: the burst of 3 passes, the other seven
    // find the bucket empty (a token comes back only after a second)
    const acks = res.slice(0, 3);
    const limited = res.slice(3);
    assert.deepEqual(acks.map((a) => [a.op, a.seq]), [['ack', 1], ['ack', 2], ['ack', 3]], 'the first three are acked, seqs 1-3');
    for (const e of limited) {
      assert.deepEqual(e, { op: 'error', id: e.id, code: 'rate_limited', message: 'too many messages; slow down' });
    }

    // the bucket is per user and shared by HTTP
    const h = await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: r.token, body: { id: uniq('h'), body: 'http too' } });
    assertError(h, 429, 'HTTP send while limited');
    assert.equal(h.body.error.message, 'too many messages; slow down');
    // the next token comes within a second at 1/s: seconds, rounded up
    const ra = h.headers.get('retry-after');
    assert.equal(ra, '1', 'Retry-After');

    // another user is not limited by r's bucket
    const other = await sc.sendMsg(g.id, 'not limited');
    assert.equal(other.op, 'ack', JSON.stringify(other));

    // nothing refused was stored
    const c = await getConv(srv, s, g.id);
    assert.equal(c.last_seq, acks.length + 1);

    // after waiting what Retry-After said, a send passes: the id refused earlier was not
    // used, so it makes a new message
    await sleep(+ra * 1000);
    const retry = await rc.sendMsg(g.id, 'retry', limited[0].id);
    assert.equal(retry.op, 'ack', `a refused id retried after Retry-After: ${JSON.stringify(retry)}`);
    assert.equal(retry.seq, c.last_seq + 1, 'a new message for a previously refused id');
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
    assert.deepEqual([info.code, info.reason], [1009, 'frame too big'], 'a frame over 64 KiB');
    assert.ok(!conn.log.some((x) => x.op === 'ack'), 'nothing was stored');
    assert.equal((await getConv(srv, f, g.id)).last_seq, 0);
  } finally { await conn.close(); }
});

test('frames: a message fragmented into frames under 64 KiB each but over it in all closes with 1009', async () => {
  const [f, o] = await signupMany(srv, 2, 'frag');
  const g = await createGroup(srv, f, [o.user.id]);
  const conn = await openSocket(srv, f.token);
  try {
    // first a fragmented message that fits: reassembled and served
    const fits = JSON.stringify({ op: 'send', id: 'frag-ok', conv: g.id, body: 'fits' });
    const half = Math.floor(fits.length / 2);
    conn.ws.send(fits.slice(0, half), { fin: false });
    conn.ws.send(fits.slice(half), { fin: true });
    const ok = await conn.next((x) => (x.op === 'ack' || x.op === 'error') && x.id === 'frag-ok');
    assert.equal(ok.op, 'ack', JSON.stringify(ok));
    // then three fragments of 30 KiB: each frame is small, the message is 90 KiB
    const big = JSON.stringify({ op: 'send', id: 'frag-big', conv: g.id, body: 'z'.repeat(90 * 1024) });
    const part = 30 * 1024;
    for (let i = 0; i < big.length; i += part) conn.ws.send(big.slice(i, i + part), { fin: i + part >= big.length });
    const info = await conn.waitClosed(5000);
    assert.deepEqual([info.code, info.reason], [1009, 'message too big']);
    assert.ok(!conn.log.some((x) => x.id === 'frag-big'), 'no answer to the oversized message');
    assert.equal((await getConv(srv, f, g.id)).last_seq, 1, 'only the message that fit was stored');
  } finally { await conn.close(); }
});

test('frames: a frame header that announces more than 64 KiB is refused (1009) before any of its payload is sent', async () => {
  const [u] = await signupMany(srv, 1, 'hdr');
  const s = await rawWebSocket(srv.port, u.token);
  try {
    // a masked text frame header announcing 1 MiB, then nothing: the server must not wait
    const head = Buffer.alloc(14);
    head[0] = 0x81; head[1] = 0x80 | 127; head.writeBigUInt64BE(1n << 20n, 2); // bytes 10-13: the mask
    s.write(head);
    const bytes = await new Promise((resolve, reject) => {
      const chunks = [];
      const t = setTimeout(() => reject(new Error('not closed within 5 s')), 5000);
      s.on('data', (d) => chunks.push(d));
      s.on('close', () => { clearTimeout(t); resolve(Buffer.concat(chunks)); });
      s.resume();
    });
    // skip the hello and presence frames; the last frame is the close frame
    let i = 0; let close = null;
    while (i < bytes.length) {
      const op = bytes[i] & 0x0f; let len = bytes[i + 1] & 0x7f; let off = i + 2;
      if (len === 126) { len = bytes.readUInt16BE(off); off += 2; } else if (len === 127) { len = Number(bytes.readBigUInt64BE(off)); off += 8; }
      if (op === 0x8) close = bytes.subarray(off, off + len);
      i = off + len;
    }
    assert.ok(close, `a close frame: ${bytes.toString('latin1').slice(-80)}`);
    assert.deepEqual([close.readUInt16BE(0), close.subarray(2).toString()], [1009, 'frame too big']);
  } finally { s.destroy(); }
});
