// Helpers for the version-2 end-to-end files (tests/e2e/v2-*.test.mjs): edit, delete,
// reactions, replies, attachments, search (docs/PROTOCOL.md "Version 2").
//
// The store under test: SQLite in the server's data directory by default. With
// PARLEY_E2E_PG_URL set (`make e2e-pg` runs scripts/pgtmp and sets it), every server is
// started on that PostgreSQL instead (PARLEY_DB_URL, the in-process bus), each in a
// fresh schema of its own (PGOPTIONS=-c search_path=...; created here with psql, dropped
// at stop), the way tests/unit/store_fixture.h isolates the store's unit tests.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { startServer, http, uniq } from './helpers.mjs';

export const PG_URL = process.env.PARLEY_E2E_PG_URL || '';
export const onPg = () => PG_URL !== '';
export const storeName = () => (onPg() ? 'postgresql' : 'sqlite');

const PSQL = process.env.PSQL || 'psql';
function psql(sql, { schema } = {}) {
  const env = { ...process.env };
  if (schema) env.PGOPTIONS = `-c search_path=${schema},public`;
  return execFileSync(PSQL, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-At', '-d', PG_URL, '-c', sql], {
    env, encoding: 'utf8', timeout: 30000, stdio: ['ignore', 'pipe', 'pipe'],
  });
}

let schemas = 0;
// A server for one v2 test file, on the store chosen above. Same extra env as startServer.
export async function startV2Server(env = {}) {
  if (!onPg()) return startServer(env);
  schemas += 1;
  const schema = `e2e_${process.pid}_${schemas}_${randomBytes(3).toString('hex')}`;
  psql(`CREATE SCHEMA ${schema}`);
  // unaccent is a trusted extension (PostgreSQL 13+): the database owner may create it.
  // Made once in public (on every search_path here) so that a schema per server does not
  // need an extension per schema; a store that makes it itself finds it there.
  try { psql('CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA public'); } catch { /* the store's business */ }
  const srv = await startServer({
    PARLEY_DB_URL: PG_URL,
    PGOPTIONS: `-c search_path=${schema},public`,
    ...env,
  });
  srv.pgSchema = schema;
  const stop = srv.stop.bind(srv);
  srv.stop = async (opts) => {
    const res = await stop(opts);
    try { psql(`DROP SCHEMA ${schema} CASCADE`); } catch (e) { process.stderr.write(`v2-helpers: drop schema ${schema}: ${e.message}\n`); }
    return res;
  };
  return srv;
}

// ---------------------------------------------------------------- the new ops

// Sends a frame with a fresh client id and waits for its ack or error (same id).
export async function op(conn, frame, timeoutMs = 5000) {
  const id = frame.id || uniq(frame.op[0]);
  conn.send({ ...frame, id });
  return conn.next((f) => (f.op === 'ack' || f.op === 'error') && f.id === id, timeoutMs);
}
export const edit = (conn, conv, seq, body) => op(conn, { op: 'edit', conv, seq, body });
export const del = (conn, conv, seq) => op(conn, { op: 'delete', conv, seq });
export const react = (conn, conv, seq, emoji, on = true) => op(conn, { op: 'react', conv, seq, emoji, on });

export async function okAck(p, what = '') {
  const f = await p;
  assert.equal(f.op, 'ack', `${what}: ${JSON.stringify(f)}`);
  return f;
}
export async function errCode(p, code, what = '') {
  const f = await p;
  assert.equal(f.op, 'error', `${what}: expected error ${code}, got ${JSON.stringify(f)}`);
  assert.equal(f.code, code, `${what}: ${JSON.stringify(f)}`);
  assert.equal(typeof f.message, 'string', `${what}: error message`);
  return f;
}

// A send with the v2 fields (reply_to, attachments); resolves the ack or error.
export function sendV2(conn, conv, body, extra = {}) {
  return op(conn, { op: 'send', conv, body, ...extra });
}

// ---------------------------------------------------------------- HTTP routes

const msgPath = (conv, seq) => `/api/conversations/${conv}/messages/${seq}`;
export const httpEdit = (srv, who, conv, seq, body) => http(srv, 'PATCH', msgPath(conv, seq), { token: who.token, body: { body } });
export const httpDelete = (srv, who, conv, seq) => http(srv, 'DELETE', msgPath(conv, seq), { token: who.token });
export const httpReact = (srv, who, conv, seq, emoji, on = true) => http(srv, on ? 'PUT' : 'DELETE', `${msgPath(conv, seq)}/reactions/${encodeURIComponent(emoji)}`, { token: who.token });
export async function changes(srv, who, conv, afterMod, limit) {
  const q = [`after_mod=${afterMod}`];
  if (limit !== undefined) q.push(`limit=${limit}`);
  return http(srv, 'GET', `/api/conversations/${conv}/changes?${q.join('&')}`, { token: who.token });
}
export async function history(srv, who, conv, q = 'limit=200') {
  const res = await http(srv, 'GET', `/api/conversations/${conv}/messages?${q}`, { token: who.token });
  assert.equal(res.status, 200, `history: ${res.text}`);
  return res.body.messages;
}
export async function messageAt(srv, who, conv, seq) {
  const page = await history(srv, who, conv, `after=${seq - 1}&limit=1`);
  assert.equal(page.length, 1, `message ${conv}/${seq}`);
  return page[0];
}
export function search(srv, who, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, String(v));
  return http(srv, 'GET', `/api/search?${q}`, { token: who.token });
}
// The seqs of the results of a search in one conversation (asserts 200).
export async function searchSeqs(srv, who, params) {
  const res = await search(srv, who, params);
  assert.equal(res.status, 200, `search ${JSON.stringify(params)}: ${res.text}`);
  return res.body.results.map((r) => r.seq);
}

// upload(srv, who, bytes, {name, type}) -> the HTTP answer (201 {"attachment"})
export function upload(srv, who, bytes, { name = 'file.bin', type = 'application/octet-stream' } = {}) {
  return http(srv, 'POST', `/api/attachments?name=${encodeURIComponent(name)}`, {
    token: who.token, raw: bytes, headers: { 'content-type': type },
  });
}
export async function uploadOk(srv, who, bytes, opts) {
  const res = await upload(srv, who, bytes, opts);
  assert.equal(res.status, 201, `upload: ${res.text}`);
  assert.equal(typeof res.body.attachment.id, 'string');
  return res.body.attachment;
}
export async function download(srv, who, id) {
  const res = await fetch(`${srv.url}/api/attachments/${encodeURIComponent(id)}`, {
    headers: { authorization: `Bearer ${who.token}` }, signal: AbortSignal.timeout(15000),
  });
  return { status: res.status, headers: res.headers, bytes: Buffer.from(await res.arrayBuffer()) };
}

// ---------------------------------------------------------------- frames and objects

// Asserts an update frame's shape: {"op":"update","conv","seq","mod","message":{...}}.
export function assertUpdate(f, what = 'update') {
  assert.equal(f.op, 'update', `${what}: ${JSON.stringify(f)}`);
  for (const k of ['conv', 'seq', 'mod']) assert.ok(Number.isSafeInteger(f[k]) && f[k] > 0, `${what}.${k}: ${JSON.stringify(f)}`);
  assert.ok(f.message && typeof f.message === 'object', `${what}.message`);
  assert.equal(f.message.conv, f.conv, `${what}.message.conv`);
  assert.equal(f.message.seq, f.seq, `${what}.message.seq`);
  assert.equal(f.message.mod, f.mod, `${what}.message.mod is the frame's mod`);
}

// The update frames a connection holds or gets, until one with mod >= lastMod for conv.
export async function updatesUntil(conn, conv, lastMod, timeoutMs = 5000) {
  const out = [];
  for (;;) {
    const f = await conn.next((x) => x.op === 'update' && x.conv === conv, timeoutMs);
    out.push(f);
    if (f.mod >= lastMod) return out;
  }
}

// ---------------------------------------------------------------- the data directory

// Every regular file under dir (recursively), with its bytes.
export function filesUnder(dir) {
  const out = [];
  const walk = (d) => {
    let names;
    try { names = readdirSync(d); } catch { return; }
    for (const n of names) {
      const p = path.join(d, n);
      let st;
      try { st = statSync(p); } catch { continue; }
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) {
        try { out.push({ path: p, bytes: readFileSync(p) }); } catch { /* removed meanwhile */ }
      }
    }
  };
  walk(dir);
  return out;
}
// The files under dir that contain any of the needles (Buffers); [{path, needle index}].
export function findInFiles(dir, needles) {
  const hits = [];
  for (const f of filesUnder(dir)) {
    needles.forEach((n, i) => { if (f.bytes.indexOf(n) >= 0) hits.push({ path: path.relative(dir, f.path), needle: i }); });
  }
  return hits;
}
// PostgreSQL: a data-only dump of the server's schema (the rows as they are now).
export function pgDump(srv) {
  return execFileSync(process.env.PG_DUMP || 'pg_dump', ['-d', PG_URL, '-n', srv.pgSchema, '--data-only', '--no-owner'], {
    encoding: 'latin1', timeout: 60000, maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'pipe'],
  });
}

// A lower-case token found nowhere else: letters then random hex (one search-index term).
export const marker = (p = 'zq') => `${p}${randomBytes(12).toString('hex')}`;
