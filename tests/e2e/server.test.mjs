// The server around the protocol: static files of the web client, HTTP/1.1
// keep-alive and pipelining, malformed and oversized requests, CORS, the
// header timeout, the WebSocket auth timeout, the connection cap, and the
// slow-consumer bound (close 1008).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  startServer, http, signupMany, createGroup, openSocket, rawSocket, closeAll, sleep,
} from './helpers.mjs';

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');

let srv;
before(async () => {
  srv = await startServer({
    PARLEY_HEADER_TIMEOUT_MS: '400',
    PARLEY_AUTH_TIMEOUT_MS: '400',
    PARLEY_MAX_OUTQ: '65536',
    PARLEY_SEND_RATE: '0',
    PARLEY_WEB_DIR: webDir,
  });
});
after(async () => { if (srv) await srv.stop(); });

// Writes raw bytes on a TCP connection and collects everything until the
// server closes it (or timeoutMs passes).
function rawExchange(port, data, { timeoutMs = 3000, keepOpenMs = 0 } = {}) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks = [];
    let closed = false;
    const finish = () => { clearTimeout(t); s.destroy(); resolve({ text: Buffer.concat(chunks).toString('latin1'), closed }); };
    const t = setTimeout(finish, timeoutMs);
    s.on('data', (d) => chunks.push(d));
    s.on('close', () => { closed = true; finish(); });
    s.on('error', () => {});
    s.on('connect', () => { if (data) s.write(data); if (keepOpenMs) setTimeout(() => {}, keepOpenMs); });
  });
}

test('static: / serves the web client, with an ETag that answers 304', async () => {
  const res = await fetch(`${srv.url}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  const body = await res.text();
  assert.equal(body, readFileSync(path.join(webDir, 'index.html'), 'utf8'));
  const etag = res.headers.get('etag');
  assert.ok(etag);
  const again = await fetch(`${srv.url}/`, { headers: { 'if-none-match': etag } });
  assert.equal(again.status, 304);
});

test('static: no path escapes the web directory; unknown files are 404', async () => {
  for (const p of ['/../CMakeLists.txt', '/%2e%2e/CMakeLists.txt', '/.hidden', '/nope.html', '/a/../../etc/passwd']) {
    const { text } = await rawExchange(srv.port, `GET ${p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    assert.match(text, /^HTTP\/1\.1 404 /, `${p}: ${text.slice(0, 80)}`);
  }
});

test('HTTP: pipelined requests on one connection are answered in order', async () => {
  const req = (p) => `GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`;
  const { text } = await rawExchange(srv.port, req('/api/health') + req('/api/nope') + req('/api/health') +
    'GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => +m[1]);
  assert.deepEqual(statuses, [200, 404, 200, 200]);
});

test('HTTP: malformed requests get 400, oversized bodies 413, oversized headers 431', async () => {
  let r = await rawExchange(srv.port, 'BLAH\r\n\r\n');
  assert.match(r.text, /^HTTP\/1\.1 400 /);
  assert.ok(r.closed);
  r = await rawExchange(srv.port, `POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n`);
  assert.match(r.text, /^HTTP\/1\.1 413 /);
  assert.match(r.text, /"code":"too_large"/);
  r = await rawExchange(srv.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`);
  assert.match(r.text, /^HTTP\/1\.1 431 /);
  const bad = await http(srv, 'POST', '/api/auth/login', { raw: '{not json' });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, 'bad_request');
});

test('HTTP: CORS preflight for SDK use from another origin', async () => {
  const res = await fetch(`${srv.url}/api/conversations`, { method: 'OPTIONS', headers: { origin: 'http://elsewhere', 'access-control-request-method': 'POST' } });
  assert.equal(res.status, 204);
  assert.equal(res.headers.get('access-control-allow-origin'), '*');
  assert.match(res.headers.get('access-control-allow-headers'), /Authorization/i);
});

test('timeouts: a request whose headers never finish is dropped', async () => {
  const t0 = Date.now();
  const r = await rawExchange(srv.port, 'GET / HTTP/1.1\r\nHost: x\r\n', { timeoutMs: 5000 });
  assert.ok(r.closed, 'closed by the server');
  assert.ok(Date.now() - t0 < 4500);
  assert.equal(r.text, '');
});

test('timeouts: an upgraded socket that never authenticates is closed with 4001', async () => {
  const c = await rawSocket(srv, {});
  assert.ok(c.isOpen);
  const info = await c.waitClosed(5000);
  assert.equal(info.code, 4001);
});

test('slow consumer: a client that stops reading is closed with 1008; others are unaffected', async () => {
  const [a, b, c] = await signupMany(srv, 3, 'slow');
  const g = await createGroup(srv, a, [b.user.id, c.user.id]);
  const sender = await openSocket(srv, a.token);
  const healthy = await openSocket(srv, c.token);
  const slow = await openSocket(srv, b.token);
  try {
    slow.ws._socket.pause(); // stop reading: the kernel buffers fill, then the out-queue
    const body = 'x'.repeat(4000);
    let acked = 0;
    const N = 1500;
    for (let i = 0; i < N; i += 50) {
      const batch = [];
      for (let k = i; k < Math.min(N, i + 50); k++) batch.push(sender.sendMsg(g.id, body, `slow-${k}`, 20000));
      const res = await Promise.all(batch);
      acked += res.filter((f) => f.op === 'ack').length;
    }
    assert.equal(acked, N);
    slow.ws._socket.resume();
    const info = await slow.waitClosed(10000);
    assert.equal(info.code, 1008);
    // the healthy member got everything, in order
    const seqs = [];
    while (seqs.length < N) seqs.push((await healthy.next('msg', 10000)).seq);
    assert.deepEqual(seqs, [...Array(N)].map((_, i) => i + 1));
  } finally {
    await closeAll(sender, healthy, slow);
  }
});

test('connection cap: past PARLEY_MAX_CONNS new connections get 503', async () => {
  const capped = await startServer({ PARLEY_MAX_CONNS: '4', PARLEY_WORKERS: '1' });
  const socks = [];
  try {
    for (let i = 0; i < 5; i++) {
      const s = net.connect(capped.port, '127.0.0.1');
      s.on('error', () => {});
      await new Promise((r) => s.once('connect', r));
      socks.push(s);
    }
    await sleep(100);
    const r = await rawExchange(capped.port, 'GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.match(r.text, /^HTTP\/1\.1 503 /);
    for (const s of socks) s.destroy();
    await sleep(200);
    const ok = await rawExchange(capped.port, 'GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(ok.text, /^HTTP\/1\.1 200 /);
  } finally {
    for (const s of socks) s.destroy();
    await capped.stop();
  }
});

test('first frame: a binary frame or an auth without a token closes with 4001', async () => {
  const c = await rawSocket(srv, {});
  c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
  assert.equal((await c.waitClosed(3000)).code, 4001);
  const [u] = await signupMany(srv, 1, 'ff');
  const d = await openSocket(srv, u.token);
  d.send({ op: 'auth' });
  assert.equal((await d.waitClosed(3000)).code, 4001);
});

test('groups: adding past PARLEY_MAX_GROUP is refused; re-adding a member is still fine', async () => {
  const small = await startServer({ PARLEY_MAX_GROUP: '3' });
  try {
    const [a, b, c, d] = await signupMany(small, 4, 'mg');
    const g = await createGroup(small, a, [b.user.id, c.user.id]);
    const add = (id) => http(small, 'POST', `/api/conversations/${g.id}/members`, { token: a.token, body: { user_id: id } });
    const full = await add(d.user.id);
    assert.equal(full.status, 400);
    assert.equal(full.body.error.code, 'bad_request');
    assert.equal((await add(b.user.id)).status, 204);
  } finally {
    await small.stop();
  }
});
