// Backpressure (issue 8, items 1 and 4): a client that sends requests or frames and never
// reads what comes back cannot make the server hold more than a bounded amount for it. The
// server stops reading from such a connection once PARLEY_OUTQ_LOW bytes wait for it (the
// proof: bytes pile up unread on the server's side of the socket), its memory stays flat, it
// keeps serving everyone else, and once the client reads again every answer arrives, in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { statSync } from 'node:fs';
import { startServer, http, signup, openSocket, closeAll } from './helpers.mjs';
import {
  rssOf, rawClient, rawWebSocket, serverStoppedReading, writeRepeated, wsFrame, drain, rawRequest,
} from './abuse.mjs';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');
const MB = 1 << 20;
// Kernel socket buffers on loopback absorb tens of MB before the server's own queue grows
// (tcp_rmem/tcp_wmem); every flood below is several times that, so an unbounded server grows
// by hundreds of MB while a bounded one stays within this.
const RSS_BOUND = 48 * MB;

let srv;
before(async () => {
  srv = await startServer({
    PARLEY_WEB_DIR: webDir,
    PARLEY_AUTH_TIMEOUT_MS: '120000',
    PARLEY_HEARTBEAT_MS: '120000',
    PARLEY_WORKERS: '1',
  });
});
after(async () => { if (srv) await srv.stop(); });

async function healthy() {
  const t0 = Date.now();
  const res = await http(srv, 'GET', '/api/health', { timeoutMs: 5000 });
  assert.equal(res.status, 200);
  return Date.now() - t0;
}

test('HTTP: pipelined requests from a client that never reads: the server stops reading, memory stays flat', async () => {
  const size = statSync(path.join(webDir, 'app.js')).size;
  const one = await rawRequest(srv.port, 'GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.equal(one.status, 200);
  const answerLen = Buffer.byteLength(one.head, 'latin1') + 4 + size;
  const N = 5000; // ~210 MB of answers
  const base = rssOf(srv.child.pid);
  const s = await rawClient(srv.port);
  try {
    writeRepeated(s, Buffer.from('GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n'), N);
    await serverStoppedReading(srv.port, s.localPort);
    const grown = rssOf(srv.child.pid) - base;
    assert.ok(grown < RSS_BOUND, `the server grew by ${(grown / MB).toFixed(1)} MB for one client`);
    await healthy();
    // reading again: every answer arrives
    const got = await drain(s, N * answerLen);
    assert.equal(got, N * answerLen, 'every pipelined request was answered once the client read');
  } finally { s.destroy(); }
});

test('WebSocket before auth: pings from a client that never reads: bounded, the server stops reading', async () => {
  const s = await rawWebSocket(srv.port);
  const base = rssOf(srv.child.pid);
  try {
    const ping = wsFrame(0x9, Buffer.alloc(125, 0x61));
    writeRepeated(s, ping, 1_000_000); // 131 MB of pings, 127 MB of pongs
    await serverStoppedReading(srv.port, s.localPort);
    const grown = rssOf(srv.child.pid) - base;
    assert.ok(grown < RSS_BOUND, `the server grew by ${(grown / MB).toFixed(1)} MB for one unauthenticated socket`);
    await healthy();
  } finally { s.destroy(); }
});

test('WebSocket: an authenticated client that floods pings and never reads is bounded too; others are served', async () => {
  const u = await signup(srv);
  const s = await rawWebSocket(srv.port, u.token);
  const other = await openSocket(srv, (await signup(srv)).token);
  const base = rssOf(srv.child.pid);
  try {
    writeRepeated(s, wsFrame(0x9, Buffer.alloc(125, 0x62)), 1_000_000);
    writeRepeated(s, wsFrame(0x1, JSON.stringify({ op: 'ping' })), 200_000);
    await serverStoppedReading(srv.port, s.localPort);
    const grown = rssOf(srv.child.pid) - base;
    assert.ok(grown < RSS_BOUND, `the server grew by ${(grown / MB).toFixed(1)} MB for one socket`);
    await other.roundtrip();
    await healthy();
  } finally {
    s.destroy();
    await closeAll(other);
  }
});
