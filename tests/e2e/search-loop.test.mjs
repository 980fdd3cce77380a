// A search never stalls its worker's loop (issue 8: "no request runs on a worker's loop for
// more than a few milliseconds"). With SQLite the searches go to a pool of reader threads with
// connections of their own (PARLEY_READ_THREADS, reader_pool.c); every other read stays on the
// worker's own connection. One worker (PARLEY_WORKERS=1), so every client shares its loop.
//
// How it cannot pass by chance: the store is made big enough that one search costs at least
// SLOW_RATIO health round trips (measured here, the store grown until it does), then health
// requests are sent one after another on a warm keep-alive connection while one search is in
// flight on another. A loop that runs the search itself answers at most the one health request
// that was already under way (and perhaps one whose answer it wrote just after the search's):
// the control below, the same store served with PARLEY_READ_THREADS=0, shows it. Off the loop,
// many are answered before the search's answer arrives. The answers of both servers are the
// same, page for page (the pool runs the very same store_search). Last, the pool's bounded
// queue (PARLEY_READ_QUEUE): past it a search is answered 503 + Retry-After at once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { startServer, signup, createGroup, openSocket, closeAll, sendMany, SECRET } from './helpers.mjs';

const SLOW_RATIO = 30;  // one search alone: at least this many health round trips
const DURING_MIN = 5;   // health answers while the search is in flight, at least (pool)
const CONTROL_MAX = 2;  // ... at most, when the loop runs the search itself (or an eighth of the pool's
                        // count: a busy machine lets a health answer or two overtake the search's)
const STEP = 20000;     // messages added per round while the store is too small
const MAX_MESSAGES = 200000;
const SLOW_Q = 'zz k';  // a word no message holds, and a one-letter prefix: FTS5 merges the
                        // postings of every word beginning with k before it can say "none"

// A deterministic vocabulary (syllables, as bench/load's word_of) and generator.
const SYL = ['ba', 'ke', 'mi', 'no', 'ru', 'sa', 'te', 'vi', 'lo', 'da', 'fe', 'gu', 'ha', 'jo', 'ku', 'pe'];
function wordOf(w) {
  let v = w + 16;
  const d = [];
  while (v) { d.push(v % 16); v = Math.floor(v / 16); }
  return d.reverse().map((x) => SYL[x]).join('');
}
function rng(seed) {
  let s = seed >>> 0;
  return () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
}
const VOCAB = 100000;
const rand = rng(8);
const body = () => Array.from({ length: 12 }, () => wordOf(Math.min(VOCAB - 1, Math.floor((VOCAB + 1) ** rand()) - 1))).join(' ');

// A client of its own: one keep-alive connection, requests one after another.
function client(srv) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = (path, token) => new Promise((resolve, reject) => {
    const req = http.get(srv.url + path, { agent, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, retryAfter: res.headers['retry-after'], text, body: text ? JSON.parse(text) : null }));
    });
    req.on('error', reject);
  });
  return { get, close: () => agent.destroy() };
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const searchPath = (q, extra = '') => `/api/search?q=${encodeURIComponent(q)}${extra}`;

// One search on s while health requests go one after another on h: how many health answers
// arrived after the search was sent and before its answer.
async function healthDuring(s, h, token) {
  let done = false;
  let during = 0;
  const search = s.get(searchPath(SLOW_Q), token).then((r) => { done = true; return r; });
  while (!done) {
    const r = await h.get('/api/health');
    assert.equal(r.status, 200);
    if (!done) during += 1;
  }
  const r = await search;
  assert.equal(r.status, 200, r.text);
  return during;
}

let srv;
let user;
let poolDuring = 0; // health answers during one search on the pool (the control's yardstick)
const env = { PARLEY_WORKERS: '1', PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0', PARLEY_READ_RATE: '0', PARLEY_READ_BURST: '0' };
before(async () => { srv = await startServer(env); });
after(async () => {
  if (srv) await srv.stop();
  if (srv) rmSync(srv.dataDir, { recursive: true, force: true }); // a restarted server keeps it
});

test('a slow search runs off the loop: other clients of the same worker are answered meanwhile; same answers as on the loop', { timeout: 600000 }, async (t) => {
  user = await signup(srv, { prefix: 'sl' });
  const g = await createGroup(srv, user);
  const conn = await openSocket(srv, user.token);
  const s = client(srv);
  const h = client(srv);
  let n = 0;
  let ratio = 0;
  const queries = [['keba'], ['keba ke'], ['ba'], ['kebake'], ['mi'], ['keba', `&conv=${g.id}&limit=100`]];
  const answers = async (c) => {
    const out = [];
    for (const [q, extra = ''] of queries) out.push((await c.get(searchPath(q, extra), user.token)).text);
    const first = (await c.get(searchPath('keba'), user.token)).body;
    assert.ok(first.results.length === 20 && first.next, 'a common word fills a page');
    out.push((await c.get(searchPath('keba', `&before=${first.next}`), user.token)).text); // a second page
    return out;
  };
  let pool;
  try {
    // grow the store until one search costs SLOW_RATIO health round trips
    while (n < MAX_MESSAGES) {
      for (let i = 0; i < STEP; i += 1000) await sendMany(conn, g.id, 1000, { body, timeoutMs: 60000 });
      n += STEP;
      const rtt = [];
      const took = [];
      await h.get('/api/health');
      for (let i = 0; i < 20; i++) { const t = performance.now(); await h.get('/api/health'); rtt.push(performance.now() - t); }
      for (let i = 0; i < 3; i++) { const t = performance.now(); const r = await s.get(searchPath(SLOW_Q), user.token); took.push(performance.now() - t); assert.equal(r.status, 200, r.text); }
      ratio = median(took) / median(rtt);
      if (ratio >= SLOW_RATIO) break;
    }
    assert.ok(ratio >= SLOW_RATIO, `the store of ${n} messages is not big enough: a search costs ${ratio.toFixed(1)} health round trips`);

    const during = await healthDuring(s, h, user.token);
    poolDuring = during;
    t.diagnostic(`${n} messages: a search costs ${ratio.toFixed(1)} health round trips; ${during} health answers during one`);
    assert.ok(during >= DURING_MIN, `only ${during} health answers while a search of ~${ratio.toFixed(0)} round trips was in flight`);

    pool = await answers(s); // to compare with the loop's below
  } finally {
    s.close();
    h.close();
    await closeAll(conn);
  }
  // control: the same store, searches on the worker's loop
  await srv.stop({ keep: true });
  srv = await srv.restart({ env: { PARLEY_JWT_SECRET: SECRET, PARLEY_SIGNUPS_PER_MIN: '0', ...env, PARLEY_READ_THREADS: '0' } });
  const s2 = client(srv);
  const h2 = client(srv);
  try {
    assert.deepEqual(await answers(s2), pool, 'the same answers from the loop and from the pool');
    await h2.get('/api/health'); // both connections warm
    const during = await healthDuring(s2, h2, user.token);
    t.diagnostic(`on the loop (PARLEY_READ_THREADS=0): ${during} health answers during one`);
    assert.ok(during <= Math.max(CONTROL_MAX, poolDuring / 8), `the loop answered ${during} health requests while it ran a search itself`);
  } finally {
    s2.close();
    h2.close();
  }

  // a full queue: one reader thread, one place; searches sent at once past those are refused
  await srv.stop({ keep: true });
  srv = await srv.restart({ env: { PARLEY_JWT_SECRET: SECRET, PARLEY_SIGNUPS_PER_MIN: '0', ...env, PARLEY_READ_THREADS: '1', PARLEY_READ_QUEUE: '1' } });
  const many = Array.from({ length: 8 }, () => client(srv));
  try {
    const res = await Promise.all(many.map((c) => c.get(searchPath(SLOW_Q), user.token)));
    const busy = res.filter((r) => r.status === 503);
    // at least one refused, at least one answered (the thread may not have taken the first from
    // the queue yet when the second arrives: then only one place was ever free)
    assert.ok(busy.length >= 1 && busy.length <= 7, `8 searches at once with 1 thread and 1 place: ${res.map((r) => r.status)}`);
    for (const r of busy) {
      assert.equal(r.body.error.code, 'unavailable');
      assert.equal(r.body.error.message, 'server busy; retry shortly');
      assert.equal(r.retryAfter, '1');
    }
    for (const r of res) if (r.status !== 503) assert.equal(r.status, 200, r.text);
  } finally {
    for (const c of many) c.close();
  }
});
