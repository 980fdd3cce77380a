// A connection the server stopped reading (issue 8, soak observations): backpressure stops
// reading a WebSocket whose output waits unread (PARLEY_OUTQ_LOW), so its pings wait unread
// too. Its silence then proves nothing, and the server must not drop it as silent; what it
// judges instead is whether the client takes the output:
//   - one that takes none of it for two heartbeat intervals is a slow consumer: 1008, counted
//     in parley_slow_consumer_closes_total (before: a TCP close for "silence", uncounted);
//   - one that reads, however slowly, stays open past two intervals and gets every answer;
//   - over PARLEY_MAX_OUTQ, the 1008 is queued behind what the kernel holds and the TCP
//     connection is closed within the close grace, although the client never reads it.
// A short heartbeat (PARLEY_HEARTBEAT_MS) keeps it fast; the proofs are events: the server's
// socket state (/proc/net/tcp), its counter, and a silent control socket whose drop shows
// that two intervals have passed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signup, signupMany, createGroup, openSocket, closeAll, sleep,
} from './helpers.mjs';
import { rawWebSocket, serverSocketRow, serverStoppedReading, writeRepeated, wsFrame, drain } from './abuse.mjs';
import { TIME_SCALE } from '../lib/server.mjs';

const HEARTBEAT = 1000;

let srv;
before(async () => {
  srv = await startServer({
    PARLEY_HEARTBEAT_MS: String(HEARTBEAT),
    PARLEY_OUTQ_LOW: '1024',
    PARLEY_MAX_OUTQ: String(256 << 20), // never reached here: only the heartbeat's verdict
    PARLEY_WORKERS: '1',
  });
});
after(async () => { if (srv) await srv.stop(); });

async function slowCloses(s) {
  const r = await http(s, 'GET', '/metrics');
  assert.equal(r.status, 200);
  const m = /^parley_slow_consumer_closes_total (\d+)$/m.exec(r.text);
  assert.ok(m, 'parley_slow_consumer_closes_total in /metrics');
  return Number(m[1]);
}

// The state of the server's end of the connection from clientPort (01: established), or null
// once it is gone.
const serverSide = (serverPort, clientPort) => serverSocketRow(serverPort, clientPort)?.[3] ?? null;

// Resolves once the server's end is no longer established (closed by the server: the client
// never closes here). Rejects after timeoutMs: the server kept it open.
async function serverClosed(serverPort, clientPort, timeoutMs) {
  const until = Date.now() + timeoutMs * TIME_SCALE;
  for (;;) {
    const st = serverSide(serverPort, clientPort);
    if (st !== '01') return st;
    if (Date.now() > until) throw new Error(`the server kept the connection open for ${timeoutMs} ms`);
    await sleep(25);
  }
}

// A socket that floods pings (125-byte payloads) and never reads: the pongs fill the kernel,
// then the server's queue passes PARLEY_OUTQ_LOW and the server stops reading it.
async function throttledSocket(s, token, pings = 100_000) {
  const sock = await rawWebSocket(s.port, token);
  writeRepeated(sock, wsFrame(0x9, Buffer.alloc(125, 0x70)), pings);
  await serverStoppedReading(s.port, sock.localPort);
  return sock;
}

test('a WebSocket the server stopped reading that reads nothing is closed 1008 slow consumer, not dropped as silent', async () => {
  const u = await signup(srv);
  const before = await slowCloses(srv);
  const sock = await throttledSocket(srv, u.token);
  try {
    // No bytes of ours taken for two intervals: closed as a slow consumer (the close frame waits
    // behind what the kernel holds; the TCP connection goes within the close grace).
    await serverClosed(srv.port, sock.localPort, 4 * HEARTBEAT + 10000);
    assert.equal(await slowCloses(srv), before + 1, 'closed as a slow consumer (1008), not as a silent connection');
  } finally { sock.destroy(); }
});

test('a WebSocket the server stopped reading that reads slowly stays open past two heartbeat intervals', async () => {
  const u = await signup(srv);
  const before = await slowCloses(srv);
  const N = 100_000;
  const sock = await throttledSocket(srv, u.token, N);
  // then an app-level ping: its pong comes after every other answer
  sock.write(wsFrame(0x1, Buffer.from('{"op":"ping"}')));
  // A control socket that never answers pings, opened now: once the server has dropped it for
  // silence, two intervals have passed while it did not read the slow one.
  const control = await openSocket(srv, (await signup(srv)).token, { wsOptions: { autoPong: false } });
  // Everything it reads is counted and scanned for the app-level pong; the socket ends if the
  // server closes it.
  const pong = Buffer.from('{"op":"pong"}');
  let total = 0;
  let carry = Buffer.alloc(0);
  let pongAt = null;
  let wake = () => {};
  sock.on('data', (d) => {
    total += d.length;
    const seen = Buffer.concat([carry, d]);
    if (pongAt === null && seen.includes(pong)) pongAt = total;
    carry = seen.subarray(Math.max(0, seen.length - pong.length));
    wake();
  });
  const ended = new Promise((resolve) => sock.once('close', () => { wake(); resolve(); }));
  // Read slowly: 64 KiB every 150 ms (~400 KiB/s, far less than the server has for it). The
  // server sees that as its unacknowledged bytes shrinking whenever the client's receive
  // window opens again; a client reading much less per interval would not show progress.
  let reading = true;
  const slowRead = (async () => {
    while (reading && !sock.destroyed) {
      const want = total + 65536;
      await new Promise((resolve) => { wake = () => { if (total >= want || sock.destroyed) resolve(); }; sock.resume(); });
      sock.pause();
      await sleep(150);
    }
  })();
  try {
    const info = await control.waitClosed(2 * HEARTBEAT + 10000);
    assert.equal(info.code, 1006, 'the control socket was dropped for silence');
    assert.equal(serverSide(srv.port, sock.localPort), '01', 'the slowly reading socket is still open');
    assert.ok(total > 0);
    reading = false;
    await slowRead;
    // It reads everything now: every pong, the server's pings, and the app-level pong after
    // all the pongs (the server's heartbeat pings may follow it).
    const found = new Promise((resolve) => { wake = () => { if (pongAt !== null) resolve(pongAt); }; });
    sock.resume();
    const at = await Promise.race([found, ended.then(() => 'closed'), sleep(60000 * TIME_SCALE).then(() => null)]);
    assert.ok(typeof at === 'number', `the app-level pong came (${at === 'closed' ? 'the connection ended' : 'timed out'} after ${total} bytes; slow-consumer closes ${await slowCloses(srv) - before})`);
    assert.ok(at >= N * 127, `after every pong (${at} bytes read by then)`);
    assert.equal(serverSide(srv.port, sock.localPort), '01', 'still open');
    assert.equal(await slowCloses(srv), before, 'not closed as a slow consumer');
  } finally {
    reading = false;
    sock.destroy();
    await closeAll(control);
  }
});

test('over PARLEY_MAX_OUTQ a client that never reads is closed promptly: 1008 queued, the TCP connection closed within the grace', async () => {
  const capped = await startServer({ PARLEY_MAX_OUTQ: '65536', PARLEY_SEND_RATE: '0', PARLEY_WORKERS: '1' });
  const [a, b] = await signupMany(capped, 2, 'cap');
  const g = await createGroup(capped, a, [b.user.id]);
  const sender = await openSocket(capped, a.token);
  const sock = await rawWebSocket(capped.port, b.token); // never reads a byte
  try {
    const before = await slowCloses(capped);
    // Fan-out to it until the server gives up on it: the kernel fills, then the queue passes
    // the cap. Sends go on until its end of the connection is closed.
    const body = 'x'.repeat(4000);
    let k = 0;
    let closed = null;
    while (closed === null && k < 20000) {
      const batch = [];
      for (let i = 0; i < 50; i++) batch.push(sender.sendMsg(g.id, body, `cap-${k++}`, 20000));
      for (const f of await Promise.all(batch)) assert.equal(f.op, 'ack');
      if (await slowCloses(capped) > before) closed = await serverClosed(capped.port, sock.localPort, 5000 + 5000);
    }
    assert.notEqual(closed, null, 'closed as a slow consumer');
    assert.equal(await slowCloses(capped), before + 1);
    // What it can still read: what the kernel held, then (if the server wrote it before the
    // grace ended) the 1008; never more than the cap beyond the kernel.
    const n = await drain(sock, Number.MAX_SAFE_INTEGER, 20000);
    assert.ok(n < k * 4100, `it reads a part of what was sent (${n} bytes)`);
    assert.ok((await sender.roundtrip()).op === 'pong', 'the sender is served on');
  } finally {
    sock.destroy();
    await closeAll(sender);
    await capped.stop();
  }
});
