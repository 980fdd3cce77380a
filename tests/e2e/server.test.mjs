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
  startServer, http, signupMany, createGroup, openSocket, rawSocket, closeAll, sleep, assertError, collectUntil,
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

// Writes raw bytes on a TCP connection and collects everything until the server
// closes it. Every exchange here is one the server must end by closing: when it has
// not closed within timeoutMs, the exchange fails (with what came so far).
function rawExchange(port, data, { timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks = [];
    const text = () => Buffer.concat(chunks).toString('latin1');
    const t = setTimeout(() => { s.destroy(); reject(new Error(`the server did not close the connection within ${timeoutMs} ms; got: ${text().slice(0, 300)}`)); }, timeoutMs);
    s.on('data', (d) => chunks.push(d));
    s.on('close', () => { clearTimeout(t); resolve({ text: text(), closed: true }); });
    s.on('error', () => {});
    s.on('connect', () => { if (data) s.write(data); });
  });
}

// The head of the first HTTP answer in text: {status, headers (lower-case names)}.
function head(text) {
  const end = text.indexOf('\r\n\r\n');
  assert.ok(end > 0, `an HTTP answer: ${text.slice(0, 200)}`);
  const [line, ...rest] = text.slice(0, end).split('\r\n');
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(line);
  assert.ok(m, `a status line: ${line}`);
  return { status: +m[1], headers: Object.fromEntries(rest.map((h) => { const i = h.indexOf(':'); return [h.slice(0, i).toLowerCase(), h.slice(i + 1).trim()]; })) };
}

// A keep-alive connection on which requests are sent one at a time: ask(req) resolves
// the next whole answer (head and Content-Length body); closed resolves when the server
// closes it.
function keepAlive(port) {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => {});
  let buf = Buffer.alloc(0);
  let waiting = null;
  const closed = new Promise((resolve) => s.on('close', () => { resolve(buf.toString('latin1')); if (waiting) waiting.reject(new Error('closed while waiting for an answer')); }));
  const pump = () => {
    if (!waiting) return;
    const t = buf.toString('latin1');
    const end = t.indexOf('\r\n\r\n');
    if (end < 0) return;
    const len = +(/\r\ncontent-length: *(\d+)/i.exec(t.slice(0, end)) || [0, 0])[1];
    if (buf.length < end + 4 + len) return;
    const answer = t.slice(0, end + 4 + len);
    buf = buf.subarray(end + 4 + len);
    const w = waiting;
    waiting = null;
    w.resolve(answer);
  };
  s.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
  const connected = new Promise((resolve) => s.once('connect', resolve));
  return {
    socket: s,
    closed,
    async ask(req) {
      await connected;
      return new Promise((resolve, reject) => { waiting = { resolve, reject }; s.write(req); pump(); });
    },
  };
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
    assert.match(text, /"code":"not_found"/, p);
  }
});

test('HTTP: pipelined requests on one connection are answered in order', async () => {
  const req = (p) => `GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`;
  const { text } = await rawExchange(srv.port, req('/api/health') + req('/api/nope') + req('/api/health') +
    'GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const statuses = [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => +m[1]);
  assert.deepEqual(statuses, [200, 404, 200, 200]);
});

test('HTTP: a keep-alive connection stays open between requests, and is closed without an answer once idle for PARLEY_HEADER_TIMEOUT_MS', async () => {
  const c = keepAlive(srv.port);
  try {
    for (let i = 0; i < 3; i++) {
      const a = await c.ask('GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal(head(a).status, 200, `request ${i} on the same connection`);
      assert.notEqual(head(a).headers.connection, 'close');
    }
    // nothing more is sent: the server closes it (400 ms here), with nothing written
    const rest = await Promise.race([c.closed, sleep(5000).then(() => { throw new Error('an idle keep-alive connection was not closed'); })]);
    assert.equal(rest, '', 'closed without an answer');
  } finally { c.socket.destroy(); }
});

test('HTTP: malformed requests get 400, oversized bodies 413, oversized headers 431, each closing the connection', async () => {
  // each answer is given with Connection: close, the connection is closed after it, and
  // a request pipelined behind it is never answered (rawExchange fails unless closed)
  const after = 'GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n';
  const expectClosing = (r, status, code, message, what) => {
    const h = head(r.text);
    assert.equal(h.status, status, `${what}: ${r.text.slice(0, 120)}`);
    assert.equal(h.headers.connection, 'close', `${what}: Connection: close`);
    const body = JSON.parse(r.text.slice(r.text.indexOf('\r\n\r\n') + 4));
    assert.deepEqual(body, { error: { code, message } }, what);
    assert.equal([...r.text.matchAll(/HTTP\/1\.1 \d{3}/g)].length, 1, `${what}: nothing answered after it`);
  };
  expectClosing(await rawExchange(srv.port, 'BLAH\r\n\r\n' + after), 400, 'bad_request', 'malformed HTTP request', 'malformed');
  // announced by Content-Length: refused before the body comes
  expectClosing(await rawExchange(srv.port, `POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n`),
    413, 'too_large', 'request body too large', 'Content-Length over 64 KiB');
  // counted while reading: a chunked body over 64 KiB
  const chunk = 'a'.repeat(40000);
  const chunked = `POST /api/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n` +
    `${chunk.length.toString(16)}\r\n${chunk}\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`;
  expectClosing(await rawExchange(srv.port, chunked + after), 413, 'too_large', 'request body too large', 'chunked body over 64 KiB');
  expectClosing(await rawExchange(srv.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n` + after),
    431, 'bad_request', 'request headers too large', 'headers over 16 KiB');
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

test('timeouts: a request whose headers never finish is dropped without an answer', async () => {
  const r = await rawExchange(srv.port, 'GET / HTTP/1.1\r\nHost: x\r\n'); // fails unless the server closes it
  assert.equal(r.text, '');
});

test('timeouts: an upgraded socket that never authenticates is closed with 4001', async () => {
  const c = await rawSocket(srv, {});
  assert.ok(c.isOpen);
  const info = await c.waitClosed(5000);
  assert.deepEqual([info.code, info.reason], [4001, 'auth timeout']);
  assert.deepEqual(c.log, []);
});

test('slow consumer: a client that stops reading is closed with 1008; others are unaffected', async () => {
  const [a, b, c] = await signupMany(srv, 3, 'slow');
  const g = await createGroup(srv, a, [b.user.id, c.user.id]);
  const sender = await openSocket(srv, a.token);
  const healthy = await openSocket(srv, c.token);
  const slow = await openSocket(srv, b.token);
  let again;
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
    assert.deepEqual([info.code, info.reason], [1008, 'slow consumer']);
    // the healthy member got everything, in order
    const seqs = [];
    while (seqs.length < N) seqs.push((await healthy.next('msg', 10000)).seq);
    assert.deepEqual(seqs, [...Array(N)].map((_, i) => i + 1));

    // nothing acknowledged is lost for the slow one either: what it got before the close
    // is a prefix (queued frames were dropped, none skipped); it reconnects and syncs on
    // from there until synced shows nothing more
    const got = slow.log.filter((f) => f.op === 'msg').map((m) => m.seq);
    assert.deepEqual(got, got.map((_, i) => i + 1), 'what came before the 1008 is in order, without a gap');
    again = await openSocket(srv, b.token);
    let held = got.length;
    for (let round = 0; round < 20; round++) {
      again.send({ op: 'sync', since: { [g.id]: held } });
      const frames = await collectUntil(again, 'synced', 20000);
      for (const m of frames.filter((f) => f.op === 'msg' && f.conv === g.id)) {
        assert.equal(m.seq, held + 1, 'sync continues exactly where the client is');
        held = m.seq;
      }
      if (frames.at(-1).conversations.find((x) => x.conv === g.id).last_seq === held) break;
    }
    assert.equal(held, N, 'after reconnecting and syncing, the slow consumer holds every message');
  } finally {
    await closeAll(sender, healthy, slow, again);
  }
});

test('connection cap: past PARLEY_MAX_CONNS new connections get 503', async () => {
  // one worker: the cap is per worker, max_conns / workers + 1 = 5 connections
  const capped = await startServer({ PARLEY_MAX_CONNS: '4', PARLEY_WORKERS: '1' });
  const held = [];
  try {
    // five connections, each proven accepted (and counted) by an answer on it
    for (let i = 0; i < 5; i++) {
      const c = keepAlive(capped.port);
      held.push(c);
      assert.equal(head(await c.ask('GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n')).status, 200, `connection ${i + 1}`);
    }
    const r = await rawExchange(capped.port, 'GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(head(r.text).status, 503);
    assert.match(r.text, /"message":"too many connections"/);
    // the server closes one itself (Connection: close): its place is free before the
    // close reaches us (freed in the same loop turn, before the next accept)
    const last = await held[0].ask('GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.equal(head(last).status, 200);
    await held[0].closed;
    const ok = await rawExchange(capped.port, 'GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.equal(head(ok.text).status, 200);
  } finally {
    for (const c of held) c.socket.destroy();
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
    assertError(full, 400, 'adding a fourth member');
    assert.equal(full.body.error.message, 'the group is full (PARLEY_MAX_GROUP)');
    assert.equal((await add(b.user.id)).status, 204);
    // at creation: more than PARLEY_MAX_GROUP members counting the creator is refused,
    // and nothing is created; exactly PARLEY_MAX_GROUP is fine
    const before = (await http(small, 'GET', '/api/conversations', { token: a.token })).body.conversations.length;
    const over = await http(small, 'POST', '/api/conversations', { token: a.token, body: { kind: 'group', title: 'too big', members: [b.user.id, c.user.id, d.user.id] } });
    assertError(over, 400, 'creating a group of 4');
    assert.equal(over.body.error.message, 'too many members');
    assert.equal((await http(small, 'GET', '/api/conversations', { token: a.token })).body.conversations.length, before, 'nothing was created');
    // the creator and duplicates are not counted twice
    const fits = await http(small, 'POST', '/api/conversations', { token: a.token, body: { kind: 'group', title: 'just fits', members: [b.user.id, c.user.id, a.user.id, b.user.id] } });
    assert.equal(fits.status, 201, fits.text);
    assert.equal(fits.body.members.length, 3);
  } finally {
    await small.stop();
  }
});
