// Shared pieces of the fault and soak runs (tests/soak): HTTP with retries for the setup,
// history reads, the server's RSS and metrics, and small statistics. Servers come from
// tests/lib/server.mjs; all traffic goes to 127.0.0.1; every wait is bounded.
import { readFileSync } from 'node:fs';
import { createHmac, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import path from 'node:path';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const SECRET = 'soak-secret-0a1b2c3d4e5f60718293a4b5c6d7e8f9';

// http(srv, method, path, {token, body, timeoutMs}) -> {status, body, text, headers}
export async function http(srv, method, path, { token, body, timeoutMs = 15000 } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(srv.url + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = undefined; }
  return { status: res.status, body: parsed, text, headers: res.headers };
}

// The same, retried on 503/429 (after Retry-After) for up to `forMs`: setup traffic only.
export async function httpRetry(srv, method, path, opts = {}, forMs = 120000) {
  const until = Date.now() + forMs;
  for (;;) {
    const r = await http(srv, method, path, opts);
    if ((r.status !== 503 && r.status !== 429) || Date.now() > until) return r;
    await sleep(1000 * (Number(r.headers.get('retry-after')) || 0.2));
  }
}

export function need(cond, what) {
  if (!cond) throw new Error(what);
}

// n users, `conc` signups at a time: [{id, username, token}]
export async function signupMany(srv, n, prefix, conc = 4) {
  const out = new Array(n);
  let next = 0;
  const tag = randomBytes(3).toString('hex');
  const one = async () => {
    for (let i = next++; i < n; i = next++) {
      const username = `${prefix}${tag}${i}`;
      // a password hash takes seconds on a loaded machine: a long wait, not a failure
      const r = await httpRetry(srv, 'POST', '/api/auth/signup', { body: { username, password: `pw-${username}` }, timeoutMs: 120000 });
      need(r.status === 201, `signup ${username}: ${r.status} ${r.text}`);
      out[i] = { id: r.body.user.id, username, token: r.body.access_token };
    }
  };
  await Promise.all(Array.from({ length: conc }, one));
  return out;
}

export async function createGroup(srv, owner, memberIds, title) {
  const r = await httpRetry(srv, 'POST', '/api/conversations', {
    token: owner.token, body: { kind: 'group', title, members: memberIds },
  });
  need(r.status === 201, `create group ${title}: ${r.status} ${r.text}`);
  return r.body.id;
}

// A conversation's whole history, oldest first (paging backwards with `before`).
export async function fullHistory(srv, token, conv) {
  const out = [];
  let before;
  for (let guard = 0; guard < 100000; guard++) {
    const q = before === undefined ? 'limit=200' : `before=${before}&limit=200`;
    const r = await http(srv, 'GET', `/api/conversations/${conv}/messages?${q}`, { token, timeoutMs: 30000 });
    need(r.status === 200, `history of ${conv}: ${r.status} ${r.text}`);
    out.push(...r.body.messages);
    if (!r.body.has_more || r.body.messages.length === 0) break;
    before = r.body.messages[r.body.messages.length - 1].seq;
  }
  return out.reverse();
}

// The resident set of a process, in KiB (null once it is gone).
export function rssKiB(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch { return null; }
}

// One counter (summed over its label sets) from the server's /metrics.
export async function metric(srv, name) {
  const r = await http(srv, 'GET', '/metrics');
  if (r.status !== 200) return null;
  let sum = null;
  for (const line of r.text.split('\n')) {
    if (line.startsWith(name) && (line[name.length] === ' ' || line[name.length] === '{')) {
      sum = (sum || 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return sum;
}

// Least-squares slope of y over x.
export function slope(xs, ys) {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) { num += (xs[i] - mx) * (ys[i] - my); den += (xs[i] - mx) ** 2; }
  return den ? num / den : 0;
}

export function quantile(sorted, q) {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// Checks one conversation's stored history against what was acked in it:
// {found, missing, dups, holes, mismatched}. acked: [{from, id, seq, body}]
export function checkStored(hist, acked) {
  let holes = 0;
  let expect = 1;
  for (const m of hist) {
    if (m.seq !== expect) holes += Math.abs(m.seq - expect);
    expect = m.seq + 1;
  }
  const byKey = new Map();
  let dups = 0;
  for (const m of hist) {
    const k = `${m.from}/${m.id}`;
    if (byKey.has(k)) dups++;
    else byKey.set(k, m);
  }
  let found = 0;
  let missing = 0;
  let mismatched = 0;
  for (const a of acked) {
    const m = byKey.get(`${a.from}/${a.id}`);
    if (!m) { missing++; continue; }
    found++;
    if (m.seq !== a.seq || m.body !== a.body) mismatched++;
  }
  return { found, missing, dups, holes, mismatched };
}

// An HS256 access token for a user, as parleyd issues them (signed with SECRET).
export function accessToken(id, username, ttlS) {
  const b64 = (x) => Buffer.from(JSON.stringify(x)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: String(id), name: username, iat: now, exp: now + ttlS })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

// n users written straight into a stopped SQLite server's database, all with the password
// hash of user 1 (a real signup): a signup costs an argon2id hash, a second or more each on a
// busy machine, and the soak is not about signups. Returns [{id, username, token}].
export function seedUsers(dataDir, n, prefix, ttlS) {
  const db = path.join(dataDir, 'parley.db');
  const sql = `WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ${n})
    INSERT INTO users (username, display_name, password_hash, created_at)
    SELECT '${prefix}' || i, 'soak user ' || i, (SELECT password_hash FROM users ORDER BY id LIMIT 1),
           CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM k;
    SELECT id, username FROM users WHERE username LIKE '${prefix}%' ORDER BY id;`;
  const out = execFileSync('sqlite3', ['-batch', '-cmd', '.timeout 10000', db, sql], { encoding: 'utf8', timeout: 60000 });
  const users = out.trim().split('\n').map((l) => {
    const [id, username] = l.split('|');
    return { id: Number(id), username, token: accessToken(Number(id), username, ttlS) };
  });
  need(users.length === n, `seeded ${users.length} users of ${n}`);
  return users;
}
