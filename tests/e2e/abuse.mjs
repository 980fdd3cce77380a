// Helpers for the hardening tests (backpressure, admission, limits): what a hostile client
// does with raw sockets, and what the server's process looks like from outside (its RSS, and
// how many bytes wait unread in its socket: the proof that it stopped reading).
//
// Linux only (/proc), like the rest of the suite's environment.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { TIME_SCALE } from '../lib/server.mjs';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The resident set of a process, in bytes.
export function rssOf(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, 'VmRSS in /proc/<pid>/status');
  return Number(m[1]) * 1024;
}

// The fields of the server's end of the TCP connection whose client port is clientPort (a
// row of /proc/net/tcp{,6}: [3] the state, [4] tx_queue:rx_queue), or null when there is none.
export function serverSocketRow(serverPort, clientPort) {
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text;
    try { text = readFileSync(file, 'utf8'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 5) continue;
      const lport = parseInt(f[1].split(':')[1], 16);
      const rport = parseInt(f[2].split(':')[1], 16);
      if (lport === serverPort && rport === clientPort) return f;
    }
  }
  return null;
}

// Bytes the kernel holds for the server that the server has not read yet on that connection;
// null when there is no such socket.
export function serverUnread(serverPort, clientPort) {
  const f = serverSocketRow(serverPort, clientPort);
  return f ? parseInt(f[4].split(':')[1], 16) : null;
}

// Resolves once the server has stopped reading from the connection: bytes wait unread on its
// side and their number has not changed over `stableMs`. Rejects if that does not happen within
// timeoutMs (a server that keeps reading everything a client sends never gets there).
export async function serverStoppedReading(serverPort, clientPort, { stableMs = 600, timeoutMs = 20000 } = {}) {
  const until = Date.now() + timeoutMs * TIME_SCALE;
  let last = -1;
  let since = Date.now();
  for (;;) {
    const q = serverUnread(serverPort, clientPort);
    if (q !== last) { last = q; since = Date.now(); }
    if (q > 0 && Date.now() - since >= stableMs) return q;
    if (Date.now() > until) throw new Error(`the server kept reading (unread on its side: ${q} bytes)`);
    await sleep(50);
  }
}

// A raw TCP connection to the server that never reads unless told to: written bytes go out,
// received bytes pile up in the kernel (paused) until resume().
export async function rawClient(port) {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => {});
  await new Promise((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); });
  s.pause();
  return s;
}

// Writes buf n times, in chunks of `per` copies (one Buffer written again and again: the
// data queues in the client, cheaply, while the server does not read).
export function writeRepeated(sock, buf, n, per = 1024) {
  const chunk = Buffer.concat(Array(Math.min(n, per)).fill(buf));
  for (let left = n; left > 0; left -= per) sock.write(left >= per ? chunk : chunk.subarray(0, left * buf.length));
}

// A masked client WebSocket frame.
export function wsFrame(opcode, payload = Buffer.alloc(0), { fin = true } = {}) {
  const p = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const mask = randomBytes(4);
  let head;
  if (p.length < 126) {
    head = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | p.length]);
  } else if (p.length < 65536) {
    head = Buffer.alloc(4);
    head[0] = (fin ? 0x80 : 0) | opcode; head[1] = 0x80 | 126; head.writeUInt16BE(p.length, 2);
  } else {
    head = Buffer.alloc(10);
    head[0] = (fin ? 0x80 : 0) | opcode; head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(p.length), 2);
  }
  const body = Buffer.alloc(p.length);
  for (let i = 0; i < p.length; i++) body[i] = p[i] ^ mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

// Upgrades a raw TCP connection to a WebSocket (optionally with a bearer token), reading the
// 101 answer; the socket is left paused, nothing after the 101 is consumed.
export async function rawWebSocket(port, token) {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => {});
  await new Promise((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); });
  const key = randomBytes(16).toString('base64');
  s.write(`GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
    (token ? `Authorization: Bearer ${token}\r\n` : '') + '\r\n');
  let got = Buffer.alloc(0);
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no 101 in time')), 5000 * TIME_SCALE);
    const onData = (d) => {
      got = Buffer.concat([got, d]);
      const end = got.indexOf('\r\n\r\n');
      if (end >= 0) {
        clearTimeout(t);
        s.off('data', onData);
        s.pause();
        const rest = got.subarray(end + 4);
        if (rest.length) s.unshift(rest);
        resolve();
      }
    };
    s.on('data', onData);
  });
  assert.match(got.toString('latin1'), /^HTTP\/1\.1 101 /);
  return s;
}

// Reads from a paused socket until `bytes` bytes arrived (or it closes / times out); resolves
// the number of bytes read.
export function drain(sock, bytes, timeoutMs = 60000) {
  return new Promise((resolve, reject) => {
    let n = 0;
    const t = setTimeout(() => { cleanup(); reject(new Error(`only ${n} of ${bytes} bytes in ${timeoutMs} ms`)); }, timeoutMs * TIME_SCALE);
    const onData = (d) => { n += d.length; if (n >= bytes) { cleanup(); resolve(n); } };
    const onClose = () => { cleanup(); resolve(n); };
    const cleanup = () => { clearTimeout(t); sock.off('data', onData); sock.off('close', onClose); };
    sock.on('data', onData);
    sock.on('close', onClose);
    sock.resume();
  });
}

// One raw HTTP exchange on a fresh connection; resolves {status, headers, text} of the first answer.
export function rawRequest(port, text, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks = [];
    const t = setTimeout(() => { s.destroy(); reject(new Error('no answer in time')); }, timeoutMs * TIME_SCALE);
    s.on('error', reject);
    s.on('data', (d) => {
      chunks.push(d);
      const all = Buffer.concat(chunks).toString('latin1');
      const end = all.indexOf('\r\n\r\n');
      if (end < 0) return;
      const len = +(/content-length: (\d+)/i.exec(all.slice(0, end)) || [0, 0])[1];
      if (all.length >= end + 4 + len) {
        clearTimeout(t);
        s.destroy();
        resolve({ status: +all.slice(9, 12), head: all.slice(0, end), text: all.slice(end + 4, end + 4 + len) });
      }
    });
    s.on('connect', () => s.write(text));
  });
}

// An HTTP request from a given local address (127.0.0.x: every one of them is this machine,
// and to the server a different source address). Resolves {status, headers, body, text}.
export function httpFrom(srv, localAddress, method, path, { body, token, timeoutMs = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers = {};
    if (payload !== undefined) { headers['content-type'] = 'application/json'; headers['content-length'] = Buffer.byteLength(payload); }
    if (token) headers.authorization = `Bearer ${token}`;
    const req = http.request({ host: '127.0.0.1', port: srv.port, localAddress, method, path, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed = null;
        try { parsed = text ? JSON.parse(text) : null; } catch { parsed = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, body: parsed, text });
      });
    });
    req.setTimeout(timeoutMs * TIME_SCALE, () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}
