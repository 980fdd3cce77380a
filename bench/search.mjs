#!/usr/bin/env node
// search: the latency of GET /api/search over a large store (protocol version 2), measured
// through the real HTTP route of a real parleyd. `make bench` runs it after the suite
// (SEARCH=0: not); docs/BENCHMARKS.md "Search over 1,000,000 messages" has the results.
//
//   node bench/search.mjs [--messages 1000000] [--senders 50] [--words 10000] [--body-bytes 100]
//                         [--reps 200] [--quick] [--server PATH] [--env KEY=VALUE ...]
//                         [--out FILE.json] [--keep] [--no-stall]
//
// 1. Starts parleyd ($PARLEYD, else build/release/parleyd; or --server) on a free 127.0.0.1
//    port with a fresh data directory under /tmp (removed at the end unless --keep), no send
//    rate limit.
// 2. Fills it with the C load generator (bench/load/parley-load writes --url ... --messages N
//    --words W): S senders, each in a group of its own (N/S messages per conversation), bodies
//    of words of a vocabulary of W (word i about 1/(i+1) as often, Zipf-like; the words of
//    word_of() in bench/load/util.c, rebuilt here). The fill rate and the data directory's
//    size are reported: the write path with the search index kept in step.
// 3. Searches as two users, sequentially on one keep-alive connection, --reps times each
//    kind of query (a different word each time where the kind allows), the p50/p90/p99/max
//    latency and the result counts:
//      "all":  a user added to every one of the S conversations: the whole store is theirs
//      "one":  one sender: its own conversation only (1/S of the store), the rest of the
//              index must be skipped by permission
//    Query kinds: a common word (ranks 0-9, in about half the messages), a mid word (ranks
//    100-199), a rare word (ranks 5000-9999), two words (a common and a mid one), a prefix
//    (3 letters: the first syllable and a letter), the mid word with conv= (one
//    conversation), and the second page (before=next) of the common word.
// 4. The loop stall (unless --no-stall): GET /api/health latency on a connection of its own,
//    alone and while rare-word searches run on another (--env PARLEY_WORKERS=1 puts both on
//    one worker's loop).
// Prints a Markdown table on stdout and writes the JSON to --out (default: /tmp).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync, statSync, existsSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { freePort } from '../tests/lib/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const { values: opt } = parseArgs({
  options: {
    messages: { type: 'string' },
    senders: { type: 'string', default: '50' },
    words: { type: 'string', default: '10000' },
    'body-bytes': { type: 'string', default: '100' },
    reps: { type: 'string' },
    quick: { type: 'boolean', default: false },
    server: { type: 'string' },
    env: { type: 'string', multiple: true, default: [] },
    out: { type: 'string' },
    keep: { type: 'boolean', default: false },
    'no-stall': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  const text = (await import('node:fs')).readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n');
  console.log(text.slice(1, text.findIndex((l) => l.startsWith('import '))).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}
const N = Number(opt.messages || (opt.quick ? 100000 : 1000000));
const S = Number(opt.senders);
const W = Number(opt.words);
const REPS = Number(opt.reps || (opt.quick ? 50 : 200));
const BIN = path.resolve(opt.server || process.env.PARLEYD || path.join(root, 'build/release/parleyd'));
const LOAD = path.resolve(process.env.PARLEY_LOAD || path.join(root, 'build/release/bench/load/parley-load'));
for (const [what, p] of [['parleyd', BIN], ['parley-load', LOAD]]) {
  if (!existsSync(p)) { console.error(`search: ${what} ${p} is missing: make build`); process.exit(2); }
}
const log = (...a) => console.error('search:', ...a);

// word_of() of bench/load/util.c
const SYL = ['ba', 'ke', 'mi', 'no', 'ru', 'sa', 'te', 'vi', 'lo', 'da', 'fe', 'gu', 'ha', 'jo', 'ku', 'pe'];
function wordOf(w) {
  let v = w + 16;
  const d = [];
  while (v) { d.push(v % 16); v = Math.floor(v / 16); }
  return d.reverse().map((x) => SYL[x]).join('');
}

// ---------------------------------------------------------------- the server

const dir = mkdtempSync(path.join(os.tmpdir(), 'parley-bench-search-'));
const port = await freePort();
const url = `http://127.0.0.1:${port}`;
const env = {
  ...process.env,
  PARLEY_LISTEN: `127.0.0.1:${port}`, PARLEY_DATA: path.join(dir, 'data'), PARLEY_LOG_LEVEL: 'warn',
  PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0', PARLEY_SIGNUPS_PER_MIN: '0', PARLEY_READ_RATE: '0', PARLEY_READ_BURST: '0',
  PARLEY_JWT_SECRET: 'bench-search-secret-0123456789abcdef', PARLEY_DRAIN_DELAY_S: '0', PARLEY_DRAIN_SECONDS: '0',
};
for (const kv of opt.env) { const i = kv.indexOf('='); env[kv.slice(0, i)] = kv.slice(i + 1); }
const child = spawn(BIN, [], { env, stdio: ['ignore', 'inherit', 'inherit'] });
let stopping = false;
child.on('exit', (code, sig) => { if (!stopping) { log(`parleyd exited (${code ?? sig}) during the run`); process.exit(1); } });
async function stop() {
  stopping = true;
  if (child.exitCode === null) {
    child.kill('SIGTERM');
    await new Promise((r) => { const t = setTimeout(() => { child.kill('SIGKILL'); r(); }, 30000); child.once('exit', () => { clearTimeout(t); r(); }); });
  }
  if (!opt.keep) rmSync(dir, { recursive: true, force: true });
}
process.on('SIGINT', async () => { await stop(); process.exit(130); });

async function api(method, p, { token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(120000) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: json, text };
}
for (let i = 0; ; i++) {
  try { await api('GET', '/api/me'); break; } catch { /* not listening yet */ }
  if (i > 600) { log('parleyd did not listen'); await stop(); process.exit(2); }
  await new Promise((r) => setTimeout(r, 100));
}

const dirBytes = (d) => {
  let n = 0;
  for (const e of readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name);
    if (e.isDirectory()) n += dirBytes(p); else if (e.isFile()) n += statSync(p).size;
  }
  return n;
};

// ---------------------------------------------------------------- the fill

const result = { started: new Date().toISOString(), params: { messages: N, senders: S, words: W, body_bytes: Number(opt['body-bytes']), reps: REPS }, parleyd: BIN };
try {
  result.checkout = execFileSync('git', ['-C', root, 'describe', '--always', '--dirty'], { encoding: 'utf8' }).trim();
} catch { /* not a checkout */ }
log(`filling ${N} messages (${S} senders, a conversation each, vocabulary of ${W} words) with ${path.relative(process.cwd(), LOAD)}`);
const fillArgs = ['writes', '--url', url, '--server-pid', String(child.pid), '--senders', String(S), '--window', '32',
  '--messages', String(N), '--warmup', '0', '--duration', '3000', '--drain', '60', '--max-seconds', '3600',
  '--words', String(W), '--body-bytes', opt['body-bytes'], '--name', 'parleyd'];
const fill = await new Promise((resolve) => {
  const p = spawn(LOAD, fillArgs, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  p.on('exit', (code) => { let r = null; try { r = JSON.parse(out.trim().split('\n').pop()); } catch { /* none */ } resolve({ code, r }); });
});
if (!fill.r || fill.r.acks < N) {
  log(`the fill failed (exit ${fill.code}): ${JSON.stringify(fill.r?.problems || null).slice(0, 800)}`);
  await stop();
  process.exit(1);
}
result.fill = {
  acked: fill.r.acks, seconds: fill.r.measured_s, acks_per_s: fill.r.acks_per_s, server_cpu_us_per_msg: fill.r.server_cpu_us_per_ack,
  ack_p99_ms: fill.r.ack_latency_ms?.p99, problems: fill.r.problems,
  data_dir_mib: Math.round(dirBytes(path.join(dir, 'data')) / 2 ** 20),
};
log(`filled: ${fill.r.acks} messages in ${fill.r.measured_s} s (${fill.r.acks_per_s}/s), data directory ${result.fill.data_dir_mib} MiB`);

// ---------------------------------------------------------------- the searchers

// parley-load's users are l<tag>_<i> with the password bench-password-1 (bench/load/main.c).
const me = await api('POST', '/api/auth/signup', { body: { username: `searcher${process.pid}`, password: 'bench-password-1' } });
const all = { token: me.body.access_token, id: me.body.user.id };
const found = await api('GET', '/api/users?q=l&limit=5', { token: all.token });
const tag = (found.body?.users || []).map((u) => /^l([0-9a-f]+)_\d+$/.exec(u.username)).find(Boolean)?.[1];
if (!tag) { log(`the generator's users were not found: ${found.text.slice(0, 200)}`); await stop(); process.exit(1); }
let one = null;
let convs = [];
for (let i = 0; i < S; i++) {
  const lg = await api('POST', '/api/auth/login', { body: { username: `l${tag}_${i}`, password: 'bench-password-1' } });
  if (lg.status !== 200) { log(`login l${tag}_${i}: ${lg.status} ${lg.text}`); await stop(); process.exit(1); }
  const tok = lg.body.access_token;
  const uid = lg.body.user.id;
  const list = await api('GET', '/api/conversations', { token: tok });
  for (const c of list.body.conversations) {
    if (c.members.some((m) => m.id === uid && m.role === 'owner')) {
      const add = await api('POST', `/api/conversations/${c.id}/members`, { token: tok, body: { user_id: all.id } });
      if (add.status !== 204) { log(`add the searcher: ${add.status} ${add.text}`); await stop(); process.exit(1); }
      convs.push({ id: c.id, last_seq: c.last_seq });
    }
  }
  if (!one) one = { token: tok, id: uid, conv: list.body.conversations[0].id };
}
convs = [...new Map(convs.map((c) => [c.id, c])).values()];
log(`searcher "all" in ${convs.length} conversations (${convs.reduce((s, c) => s + c.last_seq, 0)} messages); "one" in 1`);
// the access tokens live 15 minutes: long enough for a run, refreshed below if not
const RANGES = {
  common: (i) => i % 10,
  mid: (i) => 100 + (i % 100),
  rare: (i) => 5000 + ((i * 37) % 5000),
};
const kinds = [
  ['common word', (i) => ({ q: wordOf(RANGES.common(i)) })],
  ['mid word', (i) => ({ q: wordOf(RANGES.mid(i)) })],
  ['rare word', (i) => ({ q: wordOf(RANGES.rare(i)) })],
  ['two words', (i) => ({ q: `${wordOf(RANGES.common(i))} ${wordOf(RANGES.mid(i))}` })],
  ['prefix (3 letters)', (i) => ({ q: wordOf(100 + i).slice(0, 3) })],
  ['mid word, conv=', (i, who) => ({ q: wordOf(RANGES.mid(i)), conv: who.conv })],
  ['common word, page 2', (i) => ({ q: wordOf(RANGES.common(i)), page2: true })],
];
const q = (x) => Math.round(x * 100) / 100;
function pct(xs, p) { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; }
async function searchOnce(who, params) {
  const sp = new URLSearchParams({ q: params.q });
  if (params.conv) sp.set('conv', params.conv);
  if (params.page2) {
    const first = await api('GET', `/api/search?${sp}`, { token: who.token });
    if (first.status !== 200 || first.body.next == null) return { ms: null, n: 0, status: first.status };
    sp.set('before', first.body.next);
  }
  const t0 = performance.now();
  const r = await api('GET', `/api/search?${sp}`, { token: who.token });
  const ms = performance.now() - t0;
  if (r.status !== 200) return { ms: null, n: 0, status: r.status, text: r.text.slice(0, 200) };
  return { ms, n: r.body.results.length, more: r.body.next != null };
}
result.searches = [];
for (const [label, who] of [['all', { ...all, conv: convs[0].id }], ['one', one]]) {
  for (const [kind, make] of kinds) {
    // a few unmeasured rounds first (caches), then the measured ones
    for (let i = 0; i < 5; i++) await searchOnce(who, make(i, who));
    const ms = [];
    const counts = [];
    let failed = 0;
    let lastErr = null;
    for (let i = 0; i < REPS; i++) {
      const r = await searchOnce(who, make(i, who));
      if (r.ms === null) { failed++; lastErr = `${r.status} ${r.text || ''}`; continue; }
      ms.push(r.ms);
      counts.push(r.n);
    }
    const row = {
      searcher: label, kind, reps: REPS, failed, last_error: lastErr,
      p50_ms: ms.length ? q(pct(ms, 0.5)) : null, p90_ms: ms.length ? q(pct(ms, 0.9)) : null,
      p99_ms: ms.length ? q(pct(ms, 0.99)) : null, max_ms: ms.length ? q(Math.max(...ms)) : null,
      mean_results: counts.length ? q(counts.reduce((s, x) => s + x, 0) / counts.length) : null,
    };
    result.searches.push(row);
    log(`${label} ${kind}: p50 ${row.p50_ms} ms p99 ${row.p99_ms} ms (results ${row.mean_results}${failed ? `, ${failed} failed: ${lastErr}` : ''})`);
  }
}
// The loop stall: GET /api/health, one after another on a keep-alive connection of its own,
// alone and then while the "all" searcher runs rare-word searches one after another on
// another (run with --env PARLEY_WORKERS=1 so both share one worker's loop). A search run on
// the loop delays every health answer that arrives meanwhile by up to its own time; one run
// by a reader thread (PARLEY_READ_THREADS, embedded mode too) does not.
if (!opt['no-stall']) {
  const { Agent, request } = await import('node:http');
  const client = () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const get = (p, token) => new Promise((resolve, reject) => {
      const req = request(url + p, { agent, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      });
      req.on('error', reject);
      req.end();
    });
    return { get, close: () => agent.destroy() };
  };
  const h = client();
  const s = client();
  const pings = async (n) => { const ms = []; for (let i = 0; i < n; i++) { const t0 = performance.now(); await h.get('/api/health'); ms.push(performance.now() - t0); } return ms; };
  const row = (label, ms) => ({ label, n: ms.length, p50_ms: q(pct(ms, 0.5)), p99_ms: q(pct(ms, 0.99)), max_ms: q(Math.max(...ms)) });
  await pings(20);
  const alone = await pings(REPS * 5);
  let searching = true;
  let searches = 0;
  const searchMs = [];
  const loop = (async () => {
    for (let i = 0; i < REPS; i++) {
      const t0 = performance.now();
      await s.get(`/api/search?q=${encodeURIComponent(wordOf(RANGES.rare(i)))}`, all.token);
      searchMs.push(performance.now() - t0);
      searches++;
    }
    searching = false;
  })();
  const during = [];
  while (searching) { const t0 = performance.now(); await h.get('/api/health'); during.push(performance.now() - t0); }
  await loop;
  h.close();
  s.close();
  result.stall = { alone: row('health alone', alone), during: row(`health during ${searches} rare-word searches`, during), searches: row('the rare-word searches', searchMs) };
  for (const r of Object.values(result.stall)) log(`stall: ${r.label}: p50 ${r.p50_ms} ms p99 ${r.p99_ms} ms max ${r.max_ms} ms (${r.n})`);
}

// how many messages hold each query word (a count over the same vocabulary model): the sizes
// of the result sets the server orders before it cuts a page
// (parley-load adds words while 16 bytes are left of --body-bytes, after "<time> <k> ", ~20 bytes)
const pWord = (w) => Math.log((w + 2) / (w + 1)) / Math.log(W + 1);
let wordsTotal = 0;
for (let i = 0; i < 2000; i++) {
  let n = 20;
  let k = 0;
  while (n + 16 < Number(opt['body-bytes'])) {
    const w = Math.min(W - 1, Math.floor((W + 1) ** Math.random()) - 1);
    n += wordOf(w).length + 1;
    k++;
  }
  wordsTotal += k;
}
const wordsPerMsg = wordsTotal / 2000;
result.model = { words_per_message: q(wordsPerMsg), messages_with_word: Object.fromEntries([0, 9, 100, 199, 5000, 9999].map((w) => [`${w} (${wordOf(w)})`, Math.round(N * (1 - (1 - pWord(w)) ** wordsPerMsg))])) };
result.server_rss_kib = Number((/VmRSS:\s+(\d+)/.exec((await import('node:fs')).readFileSync(`/proc/${child.pid}/status`, 'utf8')) || [])[1]) || null;
await stop();

const lines = [];
lines.push(`Search latency through GET /api/search, ${result.started}: ${N} messages in ${S} conversations (fill ${result.fill.acks_per_s} msg/s, ${result.fill.server_cpu_us_per_msg} us of server CPU per message, data directory ${result.fill.data_dir_mib} MiB); ${REPS} queries per row, sequential, one keep-alive connection; parleyd ${result.checkout || BIN}.`);
lines.push('');
lines.push('| searcher | query | p50 ms | p90 ms | p99 ms | max ms | results per page | failed |');
lines.push('|---|---|---|---|---|---|---|---|');
for (const r of result.searches) lines.push(`| ${r.searcher === 'all' ? `all ${S} conversations` : 'one conversation'} | ${r.kind} | ${r.p50_ms ?? '-'} | ${r.p90_ms ?? '-'} | ${r.p99_ms ?? '-'} | ${r.max_ms ?? '-'} | ${r.mean_results ?? '-'} | ${r.failed} |`);
if (result.stall) {
  lines.push('');
  lines.push('Loop stall: GET /api/health one after another on its own keep-alive connection, alone, then while the "all" searcher runs rare-word searches one after another on another (both on one worker with --env PARLEY_WORKERS=1).');
  lines.push('');
  lines.push('| what | n | p50 ms | p99 ms | max ms |');
  lines.push('|---|---|---|---|---|');
  for (const r of Object.values(result.stall)) lines.push(`| ${r.label} | ${r.n} | ${r.p50_ms} | ${r.p99_ms} | ${r.max_ms} |`);
}
console.log(lines.join('\n'));
const out = opt.out || path.join(os.tmpdir(), `parley-bench-search-${result.started.replace(/[:.]/g, '-')}.json`);
mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
writeFileSync(out, JSON.stringify(result, null, 1));
if (opt.out) writeFileSync(out.replace(/\.json$/, '') + '.md', lines.join('\n') + '\n');
log(`raw results in ${out}`);
process.exit(result.searches.some((r) => r.failed === r.reps) ? 1 : 0);
