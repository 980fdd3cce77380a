// Shared helpers for the end-to-end suite (tests/e2e/*.test.mjs).
//
// Everything here speaks only the client contract (/work/shared/PROTOCOL.md, mirrored by
// docs/PROTOCOL.md): HTTP JSON routes, the /ws WebSocket and HS256 JWTs. Servers are started
// only through tests/lib/server.mjs; every wait is bounded so a broken server fails a test
// instead of hanging the run.
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { start, TIME_SCALE } from '../lib/server.mjs';

// The JWT secret every e2e server is started with, so tests can forge tokens with it.
export const SECRET = 'e2e-secret-5f3c9a1b7d2e4f60a8c1b3d5e7f90123';

// A server for one test file. Extra PARLEY_* variables go in env. Every test client comes
// from 127.0.0.1 and a test file signs up dozens of users in seconds: the signup limit per
// source address is off unless a test sets it (limits of its own: admission.test.mjs).
export function startServer(env = {}) {
  return start({ env: { PARLEY_JWT_SECRET: SECRET, PARLEY_SIGNUPS_PER_MIN: '0', ...env } });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A short random suffix: usernames and client ids that do not collide between tests.
let counter = 0;
export function uniq(prefix = 'u') {
  counter += 1;
  return `${prefix}${counter.toString(36)}${randomBytes(3).toString('hex')}`;
}

// ---------------------------------------------------------------- HTTP

// http(srv, method, path, {token, body, raw, headers}) -> {status, headers, body, text}
// body is JSON-encoded; raw is sent verbatim. The answer body is parsed when it is JSON.
export async function http(srv, method, path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  let payload;
  if (opts.raw !== undefined) {
    payload = opts.raw;
    headers['content-type'] ??= 'application/json';
  } else if (opts.body !== undefined) {
    payload = JSON.stringify(opts.body);
    headers['content-type'] = 'application/json';
  }
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  const res = await fetch(srv.url + path, {
    method,
    headers,
    body: payload,
    signal: AbortSignal.timeout((opts.timeoutMs || 15000) * TIME_SCALE),
  });
  const text = await res.text();
  let body = null;
  if (text.length) {
    try { body = JSON.parse(text); } catch { body = undefined; }
  }
  return { status: res.status, headers: res.headers, body, text };
}

// Asserts an HTTP error answer: status and body {"error":{"code","message"}}.
const CODE_OF = {
  400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 409: 'conflict',
  413: 'too_large', 429: 'rate_limited', 500: 'internal', 503: 'unavailable',
};
export function assertError(res, status, what = '') {
  const ctx = `${what} -> ${res.status} ${res.text}`;
  assert.equal(res.status, status, ctx);
  assert.ok(res.body && typeof res.body === 'object', `error body is JSON: ${ctx}`);
  assert.ok(res.body.error && typeof res.body.error === 'object', `error body has "error": ${ctx}`);
  assert.equal(res.body.error.code, CODE_OF[status], ctx);
  assert.equal(typeof res.body.error.message, 'string', ctx);
  assert.ok(res.body.error.message.length > 0, ctx);
}

export function assertUser(u, what = 'user') {
  assert.ok(u && typeof u === 'object', what);
  assert.ok(Number.isSafeInteger(u.id) && u.id > 0, `${what}.id: ${JSON.stringify(u)}`);
  assert.equal(typeof u.username, 'string', `${what}.username`);
  assert.equal(typeof u.display_name, 'string', `${what}.display_name`);
  assert.ok(Number.isSafeInteger(u.created_at) && u.created_at > 1e12, `${what}.created_at in ms: ${u.created_at}`);
}

export function assertSession(b, what = 'session') {
  assert.ok(b && typeof b === 'object', what);
  assertUser(b.user, `${what}.user`);
  assert.equal(typeof b.access_token, 'string', `${what}.access_token`);
  assert.equal(b.access_token.split('.').length, 3, `${what}.access_token is a JWT`);
  assert.equal(typeof b.refresh_token, 'string', `${what}.refresh_token`);
  assert.ok(b.refresh_token.length > 0);
  assert.ok(Number.isSafeInteger(b.expires_in) && b.expires_in > 0, `${what}.expires_in`);
}

// signup(srv, {username, password, display_name}) -> session body plus {password}
export async function signup(srv, opts = {}) {
  const username = opts.username || uniq(opts.prefix || 'u');
  const password = opts.password || `pw-${randomBytes(6).toString('hex')}`;
  const body = { username, password };
  if (opts.display_name !== undefined) body.display_name = opts.display_name;
  const res = await http(srv, 'POST', '/api/auth/signup', { body });
  assert.equal(res.status, 201, `signup ${username}: ${res.text}`);
  return { ...res.body, password, token: res.body.access_token, id: res.body.user.id };
}

export async function signupMany(srv, n, prefix = 'u') {
  const out = [];
  for (let i = 0; i < n; i++) out.push(await signup(srv, { prefix }));
  return out;
}

// Creates a group as `owner` (a session) with the given member user ids; returns the conversation.
export async function createGroup(srv, owner, memberIds = [], title = uniq('group ')) {
  const res = await http(srv, 'POST', '/api/conversations', {
    token: owner.token, body: { kind: 'group', title, members: memberIds },
  });
  assert.equal(res.status, 201, `create group: ${res.text}`);
  return res.body;
}

export async function createDirect(srv, a, bId) {
  const res = await http(srv, 'POST', '/api/conversations', {
    token: a.token, body: { kind: 'direct', user_id: bId },
  });
  assert.ok(res.status === 201 || res.status === 200, `create direct: ${res.status} ${res.text}`);
  return res.body;
}

export async function getConv(srv, who, convId) {
  const res = await http(srv, 'GET', `/api/conversations/${convId}`, { token: who.token });
  assert.equal(res.status, 200, `get conversation ${convId}: ${res.text}`);
  return res.body;
}

export async function postMessage(srv, who, convId, body, id = uniq('m')) {
  const res = await http(srv, 'POST', `/api/conversations/${convId}/messages`, {
    token: who.token, body: { id, body },
  });
  assert.equal(res.status, 201, `post message: ${res.text}`);
  return res.body;
}

// Reads a conversation's whole history by paging backwards with `before`; oldest first.
export async function fullHistory(srv, who, convId, pageSize = 200) {
  const out = [];
  let before;
  for (let guard = 0; guard < 10000; guard++) {
    const q = before === undefined ? `limit=${pageSize}` : `before=${before}&limit=${pageSize}`;
    const res = await http(srv, 'GET', `/api/conversations/${convId}/messages?${q}`, { token: who.token });
    assert.equal(res.status, 200, `history: ${res.text}`);
    const page = res.body.messages;
    out.push(...page);
    if (!res.body.has_more || page.length === 0) break;
    before = page[page.length - 1].seq;
  }
  return out.reverse();
}

// Polls fn until it returns a truthy value or the time is up; returns the last value.
export async function eventually(fn, timeoutMs = 3000, stepMs = 50) {
  const until = Date.now() + timeoutMs * TIME_SCALE;
  let v;
  for (;;) {
    v = await fn();
    if (v || Date.now() >= until) return v;
    await sleep(stepMs);
  }
}

// ---------------------------------------------------------------- JWT forging

const b64url = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
export function decodeJwt(token) {
  const [h, p] = token.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), payload: JSON.parse(Buffer.from(p, 'base64url')) };
}
// signJwt(payload, {secret, alg}) with alg HS256, HS512 or none.
export function signJwt(payload, { secret = SECRET, alg = 'HS256' } = {}) {
  const head = b64url({ alg, typ: 'JWT' });
  const body = b64url(payload);
  if (alg === 'none') return `${head}.${body}.`;
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[alg];
  const sig = createHmac(hash, secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}
export function claimsFor(user, { ttl = 600, iatShift = 0 } = {}) {
  const now = Math.floor(Date.now() / 1000) + iatShift;
  return { sub: String(user.id), name: user.username, iat: now, exp: now + ttl };
}

// ---------------------------------------------------------------- WebSocket

// A conversation id no server of a test ever reaches (ids are < 2^53).
export const NO_CONV = Number.MAX_SAFE_INTEGER;

// One WebSocket connection with a queue of received frames.
//   next(pred, timeoutMs): the first queued or future frame matching pred (an op name or a
//     function); it is taken out of the queue. Rejects on timeout or when the socket closes.
//   take(pred): all frames matching pred that are queued now (taken out).
//   closed: resolves {code, reason} when the connection is closed.
export class Conn {
  constructor(ws) {
    this.ws = ws;
    this.queue = [];
    this.log = [];
    this.waiters = [];
    this.closeInfo = null;
    this.upgradeStatus = null;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        for (const w of this.waiters.splice(0)) w.fail(new Error(`socket closed (${code}) while waiting for ${w.desc}; queue: ${this.describeQueue()}`));
      });
    });
    ws.on('error', (e) => {
      const m = /Unexpected server response: (\d+)/.exec(e.message);
      if (m) this.upgradeStatus = +m[1];
      this.lastError = e;
    });
    this.pings = 0;
    ws.on('ping', () => { this.pings += 1; });
    ws.on('message', (data, isBinary) => {
      let f;
      try { f = JSON.parse(data.toString('utf8')); } catch { f = { op: '<unparseable>', raw: data.toString('utf8'), isBinary }; }
      this.log.push(f);
      this.queue.push(f);
      this.pump();
    });
  }

  static matcher(pred) {
    if (typeof pred === 'string') return (f) => f.op === pred;
    return pred || (() => true);
  }

  describeQueue() {
    const s = JSON.stringify(this.queue.slice(0, 8));
    return (s.length > 600 ? s.slice(0, 600) + '...' : s) + (this.queue.length > 8 ? ` (+${this.queue.length - 8} more)` : '');
  }

  pump() {
    for (let i = 0; i < this.waiters.length;) {
      const w = this.waiters[i];
      const idx = this.queue.findIndex(w.match);
      if (idx >= 0) {
        const [f] = this.queue.splice(idx, 1);
        this.waiters.splice(i, 1);
        w.ok(f);
      } else i++;
    }
  }

  next(pred, timeoutMs = 5000) {
    const match = Conn.matcher(pred);
    const desc = typeof pred === 'string' ? `op ${pred}` : (pred ? pred.toString().slice(0, 120) : 'any frame');
    const idx = this.queue.findIndex(match);
    if (idx >= 0) return Promise.resolve(this.queue.splice(idx, 1)[0]);
    if (this.closeInfo) return Promise.reject(new Error(`socket closed (${this.closeInfo.code}) before ${desc}; queue: ${this.describeQueue()}`));
    return new Promise((resolve, reject) => {
      const w = {
        match, desc,
        ok: (f) => { clearTimeout(w.timer); resolve(f); },
        fail: (e) => { clearTimeout(w.timer); reject(e); },
      };
      w.timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`timed out after ${timeoutMs * TIME_SCALE} ms waiting for ${desc}; queue: ${this.describeQueue()}`));
      }, timeoutMs * TIME_SCALE);
      this.waiters.push(w);
    });
  }

  take(pred) {
    const match = Conn.matcher(pred);
    const out = [];
    this.queue = this.queue.filter((f) => (match(f) ? (out.push(f), false) : true));
    return out;
  }

  peek(pred) {
    return this.queue.filter(Conn.matcher(pred));
  }

  send(obj) { this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)); }

  get isOpen() { return this.ws.readyState === WebSocket.OPEN; }

  // A ping/pong round trip: everything the server sent before the pong is queued afterwards.
  async roundtrip(timeoutMs = 5000) {
    this.send({ op: 'ping' });
    return this.next('pong', timeoutMs);
  }

  // A barrier through the writer: a send to a conversation that cannot exist, answered
  // not_found from the writer's transaction. Its answer comes to this connection through
  // the worker's inbox, after everything published to this connection before the send
  // (publications reach each worker in publish order, before what is posted later): once
  // it is here, a frame that was going to come from an earlier publication has come.
  // Proves that something did NOT arrive without waiting for a while. Costs a token of
  // the user's send bucket.
  async barrier(timeoutMs = 5000) {
    const id = uniq('barrier');
    this.send({ op: 'send', id, conv: NO_CONV, body: 'barrier' });
    const f = await this.next((x) => (x.op === 'ack' || x.op === 'error') && x.id === id, timeoutMs);
    assert.deepEqual(f, { op: 'error', id, code: 'not_found', message: 'no such conversation' }, 'barrier');
    return f;
  }

  // Sends a message and waits for its ack (or error) for that client id.
  async sendMsg(conv, body, id = uniq('c'), timeoutMs = 5000) {
    this.send({ op: 'send', id, conv, body });
    return this.next((f) => (f.op === 'ack' || f.op === 'error') && f.id === id, timeoutMs);
  }

  async waitClosed(timeoutMs = 5000) {
    let timer;
    const t = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`socket not closed within ${timeoutMs * TIME_SCALE} ms`)), timeoutMs * TIME_SCALE); });
    try { return await Promise.race([this.closed, t]); } finally { clearTimeout(timer); }
  }

  async close() {
    if (this.closeInfo) return this.closeInfo;
    try { this.ws.close(1000); } catch { /* not open */ }
    try { return await this.waitClosed(3000); } catch { this.ws.terminate(); return this.closed; }
  }
}

// rawSocket(srv, {token, via, headers, wsOptions}): a connection, resolved once open or refused.
//   via 'header' (Authorization: Bearer), 'query' (?token=) or undefined (no credentials);
//   wsOptions go to the ws client (e.g. {autoPong: false}: a client that never answers pings).
// Resolves the Conn in every case; conn.upgradeStatus is set when the upgrade was refused.
export function rawSocket(srv, { token, via = 'header', headers = {}, timeoutMs = 5000, wsOptions = {} } = {}) {
  let url = srv.wsUrl;
  const h = { ...headers };
  if (token !== undefined && via === 'header') h.authorization = `Bearer ${token}`;
  if (token !== undefined && via === 'query') url += `?token=${encodeURIComponent(token)}`;
  const ws = new WebSocket(url, { headers: h, handshakeTimeout: timeoutMs * TIME_SCALE, perMessageDeflate: false, ...wsOptions });
  const conn = new Conn(ws);
  return new Promise((resolve) => {
    const done = () => resolve(conn);
    ws.once('open', done);
    ws.once('close', done);
  });
}

// An authenticated socket: waits for (and checks) the hello frame. via 'header', 'query' or 'frame'.
export async function openSocket(srv, token, { via = 'header', timeoutMs = 5000, wsOptions = {} } = {}) {
  const conn = await rawSocket(srv, via === 'frame' ? { timeoutMs, wsOptions } : { token, via, timeoutMs, wsOptions });
  assert.ok(conn.isOpen, `socket did not open (upgrade status ${conn.upgradeStatus}, close ${JSON.stringify(conn.closeInfo)})`);
  if (via === 'frame') conn.send({ op: 'auth', token });
  conn.hello = await conn.next('hello', timeoutMs);
  return conn;
}

// Opens a socket with a token that must be refused, as docs/PROTOCOL.md says for the way
// it is given: in the Authorization header or ?token=, the upgrade is answered 401; in an
// auth frame (the upgrade succeeds without credentials), the connection closes with 4001
// and the reason `reason` when given. No hello either way.
export async function expectWsRefused(srv, token, via, what = '', reason = undefined) {
  const conn = await rawSocket(srv, via === 'frame' ? {} : { token, via });
  if (via !== 'frame') {
    assert.ok(!conn.isOpen, `${what}: the upgrade was accepted (frames: ${JSON.stringify(conn.log)})`);
    assert.equal(conn.upgradeStatus, 401, `${what}: upgrade answered ${conn.upgradeStatus}`);
    return 'http-401';
  }
  assert.ok(conn.isOpen, `${what}: an upgrade without credentials is accepted`);
  conn.send({ op: 'auth', token });
  const info = await conn.waitClosed(5000).catch(async (e) => { await conn.close(); throw new Error(`${what}: ${e.message}; frames: ${JSON.stringify(conn.log)}`); });
  assert.deepEqual(conn.log, [], `${what}: frames before the close (a hello for a bad token?)`);
  assert.equal(info.code, 4001, `${what}: close code`);
  if (reason !== undefined) assert.equal(info.reason, reason, `${what}: close reason`);
  return 'close-4001';
}

// Closes every socket given (ignoring failures); for after/finally blocks.
export async function closeAll(...conns) {
  await Promise.all(conns.flat().filter(Boolean).map((c) => c.close().catch(() => {})));
}

// Sends n messages on one connection without waiting in between; resolves the acks in send order.
export async function sendMany(conn, conv, n, { prefix = uniq('b'), timeoutMs = 20000, body = (i) => `${prefix} #${i}` } = {}) {
  const ids = [];
  for (let i = 0; i < n; i++) {
    const id = `${prefix}-${i}`;
    ids.push(id);
    conn.send({ op: 'send', id, conv, body: body(i) });
  }
  const acks = [];
  for (const id of ids) {
    const f = await conn.next((x) => (x.op === 'ack' || x.op === 'error') && x.id === id, timeoutMs);
    assert.equal(f.op, 'ack', `send ${id}: ${JSON.stringify(f)}`);
    acks.push(f);
  }
  return acks;
}

// The frames up to and including the first one matching `last` (taken from the queue), in order.
export async function collectUntil(conn, last, timeoutMs = 5000) {
  const match = Conn.matcher(last);
  const out = [];
  for (;;) {
    const f = await conn.next(null, timeoutMs);
    out.push(f);
    if (match(f)) return out;
  }
}

// Asserts a message object (HTTP) or msg frame (WebSocket) shape.
export function assertMessage(m, what = 'message') {
  assert.ok(m && typeof m === 'object', what);
  for (const k of ['conv', 'seq', 'from', 'ts']) assert.ok(Number.isSafeInteger(m[k]) && m[k] > 0, `${what}.${k}: ${JSON.stringify(m)}`);
  assert.equal(typeof m.id, 'string', `${what}.id`);
  assert.equal(typeof m.body, 'string', `${what}.body`);
  assert.ok(m.body.length > 0, `${what}.body non-empty`);
}

export function assertConversation(c, what = 'conversation') {
  assert.ok(c && typeof c === 'object', what);
  assert.ok(Number.isSafeInteger(c.id) && c.id > 0, `${what}.id`);
  assert.ok(c.kind === 'direct' || c.kind === 'group', `${what}.kind: ${c.kind}`);
  if (c.kind === 'direct') assert.equal(c.title, null, `${what}.title of a direct conversation`);
  else assert.equal(typeof c.title, 'string', `${what}.title`);
  assert.ok(Array.isArray(c.members), `${what}.members`);
  for (const m of c.members) {
    assert.ok(Number.isSafeInteger(m.id), `${what}.members[].id`);
    assert.equal(typeof m.username, 'string');
    assert.equal(typeof m.display_name, 'string');
    assert.equal(typeof m.role, 'string');
  }
  for (const k of ['last_seq', 'last_read_seq', 'unread']) assert.ok(Number.isSafeInteger(c[k]) && c[k] >= 0, `${what}.${k}: ${c[k]}`);
  assert.ok('last_message' in c, `${what}.last_message present`);
  if (c.last_message !== null) assertMessage(c.last_message, `${what}.last_message`);
  assert.ok(Number.isSafeInteger(c.created_at) && c.created_at > 1e12, `${what}.created_at`);
}

// Asserts that `actual` carries every field of `expected` with an equal value. The contract lets
// the project add fields, so frames and objects are compared on the contract's fields only.
export function assertHas(actual, expected, what = '') {
  assert.ok(actual && typeof actual === 'object', `${what}: not an object: ${JSON.stringify(actual)}`);
  for (const [k, v] of Object.entries(expected)) {
    assert.deepEqual(actual[k], v, `${what}: field ${k} of ${JSON.stringify(actual)}`);
  }
}
export const pick = (obj, keys) => Object.fromEntries(keys.map((k) => [k, obj[k]]));
export const MSG_KEYS = ['conv', 'seq', 'from', 'id', 'body', 'ts'];

export const roleOf = (conv, userId) => (conv.members.find((m) => m.id === userId) || {}).role;
