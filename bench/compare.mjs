#!/usr/bin/env node
// compare: runs the benchmark scenarios against parleyd and the reference servers in ONE run
// on one machine, and prints a Markdown table of medians and ratios (parleyd / every other server).
// bench/run.sh is the usual way in (make bench); it passes its arguments here.
//
//   node bench/compare.mjs [--reps 2] [--quick] [--suite load|node|all] [--only load/fanout,...]
//                          [--servers parleyd,parleyd-base,parleyd-batch1,node-ref,uws-ref,uws-nostore|all]
//                          [--base-bin PATH --base-label NAME] [--out results.json]
//                          [--warmup 1] [--duration 3] [--setup-cache bench/.cache | --setup-cache none]
//                          [--quiet-cores 0.3] [--quiet-max-wait 2] [--max-other-cores 0.25] [--retries 0]
//                          [--regress-threshold 0.1]
//
// The default (make bench): the load suite, 2 rounds, 1 s warm-up and 3 s measured per cell,
// parleyd, parleyd-batch1 (load/writes), node-ref, uws-ref and uws-nostore (the fan-out cells),
// in about 12-15 minutes on a 2-core machine with a cold setup cache, less when it is warm.
// The total wall time is printed at the end.
//
// Setup cache (--setup-cache DIR, default bench/.cache/, git-ignored; 'none' turns it off): each
// load cell runs parley-load with --setup-cache DIR --setup-pool N --cache-as LABEL, N the most
// users any cell of the suite needs (2,000; --quick: 400), LABEL the server's name, except
// variants that share their base's data: parleyd-batch1 and parleyd-notrim -> parleyd,
// uws-nostore -> uws-ref. The first run signs up a pool of N users per server label once
// (DIR/LABEL/users/) and stores every cell's setup (DIR/LABEL/SHAPE.pN/: a copy of the stopped
// server's data directory plus the ids and tokens); later cells and runs copy it into their fresh
// temporary directory and skip the HTTP setup. The key is the label and the setup's shape only
// (not the binary): a server that refuses a cached directory falls back to a fresh setup.
// Entries expire a day before their access tokens (30 days). Clear it: rm -rf bench/.cache.
// Each cell's JSON says setup_cache.state (hit, pool, miss) and setup_s. Every cell still gets a
// fresh server process and its own copy of the data.
//
// Scenarios. --suite load (the default): the C load generator, bench/load/parley-load ($PARLEY_LOAD,
// else build/release/bench/load/parley-load): load/writes, load/writes-group, load/fanout,
// load/fanout-m10 and load/fanout-m100 (the same fan-out into groups of 10 and 100: the group-size
// sweep), load/fanout-react and load/fanout-edit (protocol version 2: update frames; parleyd only),
// load/pairs, load/latency-group and load/latency-pairs (issue 9's latency targets: a steady 20
// messages/s into 1,000 members; 2,000 users in pairs at 10,000/s), load/conns (5,000, 10,000 and 19,000 idle connections in steps). --suite node: the Node.js generator bench/parley-bench.mjs, as before:
// send-throughput/group, send-throughput/direct, fanout, idle-memory. --only picks from both.
// --quick: smaller sizes and 3 s measurements (with --base and no --servers: parleyd and
// parleyd-base only, the quick regression check).
//
// Servers (each cell gets a fresh server process and a fresh data directory):
//   parleyd         $PARLEYD, else build/release/parleyd, default batching
//   parleyd-base    --base-bin PATH (or $PARLEYD_BASE): a previous commit's parleyd, built by
//                   bench/base-build.sh (run.sh --base REF does both)
//   parleyd-batch1  the same binary with PARLEY_BATCH_MAX=1 (the batching writer turned off);
//                   run for send-throughput and load/writes only
//   node-ref        $NODE_REF, else ../shared/baselines/node-ref/parleyd-node
//   uws-ref         $UWS_REF,  else ../shared/baselines/uws-ref/parleyd-uws
//   uws-nostore     (only with --servers all or by name) uws-ref with PARLEY_NO_STORE=1: no database
//                   on the send path, acks at once (NOT durable): the pub/sub ceiling of that stack
//   parleyd-notrim  (only with --servers all or by name) parleyd with
//                   GLIBC_TUNABLES=glibc.malloc.trim_threshold=67108864, a diagnostic
// All of them get PARLEY_SEND_RATE=0 and PARLEY_SEND_BURST=0 (no rate limit) from the generator.
//
// Cells run in rounds: each round runs every (scenario, server) once, with the server order
// rotated from round to round, so slow drift of the machine hits every server alike. Before
// each cell the runner waits (at most --quiet-max-wait seconds) for the machine to be quiet:
// other processes using less than --quiet-cores cores. A cell during which other processes
// still used more than --max-other-cores cores on average is run again (at most --retries
// times) and the least disturbed attempt is kept. The figures are medians over rounds.
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, mkdirSync, mkdtempSync, copyFileSync, chmodSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const bench = path.join(here, 'parley-bench.mjs');
const LOAD_SRC = path.resolve(process.env.PARLEY_LOAD || path.join(root, 'build/release/bench/load/parley-load'));

const { values: opt } = parseArgs({
  options: {
    reps: { type: 'string', default: '2' },
    warmup: { type: 'string' },
    duration: { type: 'string' },
    'setup-cache': { type: 'string', default: path.join(path.dirname(fileURLToPath(import.meta.url)), '.cache') },
    quick: { type: 'boolean', default: false },
    suite: { type: 'string', default: 'load' },
    only: { type: 'string' },
    servers: { type: 'string' },
    'base-bin': { type: 'string' },
    'base-label': { type: 'string' },
    'regress-threshold': { type: 'string', default: '0.1' },
    out: { type: 'string' },
    'quiet-cores': { type: 'string', default: '0.3' },
    'quiet-max-wait': { type: 'string', default: '2' },
    'max-other-cores': { type: 'string', default: '0.25' },
    retries: { type: 'string', default: '0' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  const text = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n');
  console.log(text.slice(1, text.findIndex((l) => l.startsWith('import '))).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}

const PARLEYD_SRC = path.resolve(process.env.PARLEYD || path.join(root, 'build/release/parleyd'));
// A private copy of the binary, so a rebuild in the tree during the run cannot change it.
let PARLEYD = PARLEYD_SRC;
let parleydSha = null;
if (existsSync(PARLEYD_SRC)) {
  PARLEYD = path.join(mkdtempSync(path.join(os.tmpdir(), 'parley-bench-bin-')), 'parleyd');
  copyFileSync(PARLEYD_SRC, PARLEYD);
  const copyDir = path.dirname(PARLEYD);
  process.on('exit', () => rmSync(copyDir, { recursive: true, force: true }));
  chmodSync(PARLEYD, 0o755);
  parleydSha = createHash('sha256').update(readFileSync(PARLEYD)).digest('hex').slice(0, 16);
}
// The same for the base build and the C load generator.
function privateCopy(src, name) {
  if (!src || !existsSync(src)) return src;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'parley-bench-bin-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const dst = path.join(dir, name);
  copyFileSync(src, dst);
  chmodSync(dst, 0o755);
  return dst;
}
const BASE_SRC = opt['base-bin'] || process.env.PARLEYD_BASE ? path.resolve(opt['base-bin'] || process.env.PARLEYD_BASE) : null;
const PARLEYD_BASE = privateCopy(BASE_SRC, 'parleyd');
const baseSha = PARLEYD_BASE && existsSync(PARLEYD_BASE) ? createHash('sha256').update(readFileSync(PARLEYD_BASE)).digest('hex').slice(0, 16) : null;
const LOAD = privateCopy(LOAD_SRC, 'parley-load');
let gitRev = process.env.PARLEYD ? 'PARLEYD given: see its build' : null;
if (!gitRev) try {
  gitRev = execFileSync('git', ['-C', root, 'describe', '--always', '--dirty'], { encoding: 'utf8' }).trim();
} catch { /* not a checkout */ }
const NODE_REF = path.resolve(process.env.NODE_REF || path.join(root, '../shared/baselines/node-ref/parleyd-node'));
const UWS_REF = path.resolve(process.env.UWS_REF || path.join(root, '../shared/baselines/uws-ref/parleyd-uws'));

const ALL_SERVERS = [
  { name: 'parleyd', bin: PARLEYD, env: [] },
  ...(PARLEYD_BASE ? [{ name: 'parleyd-base', bin: PARLEYD_BASE, env: [] }] : []),
  { name: 'parleyd-batch1', bin: PARLEYD, env: ['PARLEY_BATCH_MAX=1'], only: /^(send-throughput|load\/writes$)/, cacheAs: 'parleyd' },
  { name: 'node-ref', bin: NODE_REF, env: [] },
  { name: 'uws-ref', bin: UWS_REF, env: [] },
  // uws-ref without its database on the send path (not durable): the pub/sub ceiling, issue 9's
  // fan-out target; run for the fan-out cells (the group-size sweep) only.
  { name: 'uws-nostore', bin: UWS_REF, env: ['PARLEY_NO_STORE=1'], only: /^load\/fanout(-m\d+|-1x1000|-100x10)?$/, cacheAs: 'uws-ref' },
  // Diagnostic, only with --servers all (or named): parleyd with glibc's heap trimming
  // effectively off, to show what the writer thread's madvise churn costs (docs/BENCHMARKS.md).
  // Diagnostic, opt-in: parleyd waiting out the whole batch interval (the writer's early commit
  // off), to show what PARLEY_BATCH_GAP_US buys (docs/BENCHMARKS.md).
  { name: 'parleyd-nogap', bin: PARLEYD, env: ['PARLEY_BATCH_GAP_US=0'], only: /^load\//, optIn: true, cacheAs: 'parleyd' },
  { name: 'parleyd-notrim', bin: PARLEYD, env: ['GLIBC_TUNABLES=glibc.malloc.trim_threshold=67108864'], only: /^(send-throughput|fanout)/, optIn: true, cacheAs: 'parleyd' },
];

const Q = opt.quick;
// The servers that speak protocol version 2 (edit, delete, react, update frames).
const V2_SERVERS = ['parleyd', 'parleyd-notrim'];
// Sizes are modest on purpose: the machine this was written on has 2 cores, shared by the
// server and the load generator.
// tool 'load': bench/load/parley-load (C), measured over a fixed time after a warm-up;
// tool 'node': bench/parley-bench.mjs, measured over a fixed number of messages.
const T = (full, quick) => (Q ? quick : full);
const timing = ['--warmup', opt.warmup || T('1', '1'), '--duration', opt.duration || T('3', '2')];
const ALL_SCENARIOS = [
  { id: 'load/writes', tool: 'load', suite: 'load', args: ['writes', '--senders', '50', '--window', '32', ...timing] },
  { id: 'load/writes-group', tool: 'load', suite: 'load', args: ['writes', '--group', '--senders', '50', '--window', '32', ...timing] },
  { id: 'load/fanout', tool: 'load', suite: 'load', args: ['fanout', '--groups', '1', '--members', T('1000', '200'), '--publishers', '4', '--window', '8', ...timing] },
  // The group-size sweep (with load/fanout: deliveries/s and CPU per delivery against the group
  // size, plotted by bench/report.mjs): the same publishers and window into smaller groups.
  { id: 'load/fanout-m10', tool: 'load', suite: 'load', args: ['fanout', '--groups', '1', '--members', '10', '--publishers', '4', '--window', '8', ...timing] },
  // Issue 9's fan-out targets as the issue states them: one publisher per group with at most 8
  // unacknowledged sends, into 1 group of 1,000 members and into 100 groups of 10. Issue 9's
  // cells skip node-ref (notOn): their yardsticks are uws-ref and uws-nostore, and node-ref's
  // 1,000 connections took 20 s a cell, enough to put a cold make bench over 15 minutes.
  { id: 'load/fanout-1x1000', tool: 'load', suite: 'load', notOn: ['node-ref'], args: ['fanout', '--groups', '1', '--members', T('1000', '200'), '--publishers', '1', '--window', '8', ...timing] },
  { id: 'load/fanout-100x10', tool: 'load', suite: 'load', notOn: ['node-ref'], args: ['fanout', '--groups', T('100', '20'), '--members', '10', '--publishers', '1', '--window', '8', ...timing] },
  { id: 'load/fanout-m100', tool: 'load', suite: 'load', args: ['fanout', '--groups', '1', '--members', '100', '--publishers', '4', '--window', '8', ...timing] },
  // Protocol version 2: the same group, the same publishers and window, but each publisher
  // changes a message of its own instead of sending new ones, and every member connection gets
  // an update frame (the whole message) per change. parleyd only: the baselines speak version 1.
  { id: 'load/fanout-react', tool: 'load', suite: 'load', v2: true, args: ['fanout', '--op', 'react', '--groups', '1', '--members', T('1000', '200'), '--publishers', '4', '--window', '8', ...timing] },
  { id: 'load/fanout-edit', tool: 'load', suite: 'load', v2: true, args: ['fanout', '--op', 'edit', '--groups', '1', '--members', T('1000', '200'), '--publishers', '4', '--window', '8', ...timing] },
  { id: 'load/pairs', tool: 'load', suite: 'load', args: ['pairs', '--users', T('400', '100'), '--rate', T('4000', '2000'), ...timing] },
  // Idle connections in steps (RSS after each; one setup): 5,000, 10,000, 19,000 fit under the
  // hard descriptor limit of 20,000 for the generator and the server each. Run in the first round
  // only: memory does not depend on the machine's load (0.525-0.528 KiB per connection in 8 runs
  // on 2026-12-03), and a round of it takes about a minute per server.
  // Issue 9's latency targets: p99 send-to-deliver at a steady rate, against uws-ref with its
  // database on (the durable comparison): 20 messages/s into a 1,000-member group, and 2,000 users
  // in direct pairs at 10,000 messages/s.
  { id: 'load/latency-group', tool: 'load', suite: 'load', notOn: ['node-ref'], args: ['fanout', '--groups', '1', '--members', T('1000', '200'), '--publishers', '1', '--rate', '20', ...timing] },
  { id: 'load/latency-pairs', tool: 'load', suite: 'load', notOn: ['node-ref'], args: ['pairs', '--users', T('2000', '400'), '--rate', T('10000', '2000'), ...timing] },
  { id: 'load/conns', tool: 'load', suite: 'load', once: true, args: ['conns', '--steps', T('5000,10000,19000', '1000,2000,4000'), '--users', '100', '--settle', '3'] },
  { id: 'send-throughput/group', tool: 'node', suite: 'node', args: ['send-throughput', '--mode', 'group', '--senders', '50', '--window', '32', '--messages', Q ? '4000' : '20000'] },
  { id: 'send-throughput/direct', tool: 'node', suite: 'node', args: ['send-throughput', '--mode', 'direct', '--senders', '50', '--window', '32', '--messages', Q ? '4000' : '20000'] },
  { id: 'fanout', tool: 'node', suite: 'node', args: ['fanout', '--members', '100', '--senders', '4', '--window', '8', '--messages', Q ? '300' : '3000'] },
  { id: 'idle-memory', tool: 'node', suite: 'node', args: ['idle-memory', '--conns', Q ? '500' : '2000', '--users', '100'] },
];

const pick = (list, csv) => {
  if (!csv) return list;
  const want = csv.split(',').map((s) => s.trim());
  for (const w of want) if (!list.some((x) => (x.id || x.name) === w)) throw new Error(`unknown: ${w}`);
  return list.filter((x) => want.includes(x.id || x.name));
};
if (!['load', 'node', 'all'].includes(opt.suite)) throw new Error(`--suite must be load, node or all, got ${opt.suite}`);
const scenarios = opt.only ? pick(ALL_SCENARIOS, opt.only) : ALL_SCENARIOS.filter((s) => opt.suite === 'all' || s.suite === opt.suite);
// --quick with a base build and no --servers: the quick regression check, parleyd against its base.
const defaultServers = Q && PARLEYD_BASE && !opt.servers ? ALL_SERVERS.filter((s) => ['parleyd', 'parleyd-base'].includes(s.name)) : ALL_SERVERS.filter((s) => !s.optIn);
const servers = (opt.servers === 'all' ? ALL_SERVERS : opt.servers ? pick(ALL_SERVERS, opt.servers) : defaultServers).filter((s) => {
  if (existsSync(s.bin)) return true;
  console.error(`compare: ${s.name}: ${s.bin} not found, skipped (set PARLEYD / PARLEYD_BASE / NODE_REF / UWS_REF)`);
  return false;
});
if (scenarios.some((s) => s.tool === 'load') && !existsSync(LOAD || '')) {
  console.error(`compare: the C load generator ${LOAD_SRC} is missing: make build (or ninja -C build/release parley-load), or set PARLEY_LOAD`);
  process.exit(2);
}
const reps = Math.max(1, Number(opt.reps) || 1);
const CACHE = opt['setup-cache'] === 'none' ? null : path.resolve(opt['setup-cache']);
// The user pool: the most users any load cell of the suite needs (the same for every subset of it,
// so that every cached database holds the same users).
const argOf = (args, k) => { const i = args.indexOf(k); return i >= 0 ? Number(args[i + 1]) : null; };
const usersOf = (sc) => {
  const [kind, ...a] = sc.args;
  if (kind === 'fanout') return (argOf(a, '--groups') || 1) * (argOf(a, '--members') || 100);
  if (kind === 'pairs') return argOf(a, '--users') || 1000;
  if (kind === 'writes') return argOf(a, '--senders') || 50;
  return Math.min(argOf(a, '--users') || 100, 100);
};
const POOL = Math.max(...ALL_SCENARIOS.filter((x) => x.tool === 'load').map(usersOf));
const quietCores = Number(opt['quiet-cores']);
const quietMaxWait = Number(opt['quiet-max-wait']) * 1000;
const maxOther = Number(opt['max-other-cores']);
const retries = Math.max(0, Number(opt.retries) || 0);
// Cores used on average by processes other than the server and the client during the cell.
const otherCores = (res) => (res?.cpu?.other_cpu_s != null && res.cpu.wall_s ? res.cpu.other_cpu_s / res.cpu.wall_s : null);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function busyJiffies() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0), total: f.reduce((a, b) => a + b, 0) };
}
// Cores kept busy by everything on the machine over the next half second.
async function busyCores() {
  const a = busyJiffies();
  await sleep(500);
  const b = busyJiffies();
  return ((b.busy - a.busy) / Math.max(1, b.total - a.total)) * os.cpus().length;
}
async function waitQuiet() {
  const t0 = Date.now();
  let c = await busyCores();
  while (c > quietCores && Date.now() - t0 < quietMaxWait) c = await busyCores();
  return { busy_cores_before: Math.round(c * 100) / 100, waited_s: Math.round((Date.now() - t0) / 100) / 10 };
}

function runCell(sc, sv) {
  return new Promise((resolve) => {
    const common = ['--server', sv.bin, '--name', sv.name, ...sv.env.flatMap((e) => ['--env', e])];
    const cache = CACHE ? ['--setup-cache', CACHE, '--setup-pool', String(POOL), ...(sv.cacheAs ? ['--cache-as', sv.cacheAs] : [])] : [];
    const [cmd, args] = sc.tool === 'load'
      ? [LOAD, [...sc.args, ...common, ...cache]]
      : [process.execPath, [bench, ...sc.args, '--json', ...common]];
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; process.stderr.write(d); });
    const killer = setTimeout(() => child.kill('SIGKILL'), 10 * 60 * 1000);
    child.on('exit', (code) => {
      clearTimeout(killer);
      let r = null;
      try { r = JSON.parse(out.trim().split('\n').pop()); } catch { /* no result */ }
      const shown = sc.tool === 'load' ? `${path.relative(process.cwd(), LOAD_SRC)} ${args.join(' ')}` : `node ${path.relative(process.cwd(), bench)} ${args.slice(1).join(' ')}`;
      resolve({ code, result: r, stderr: err.slice(-4000), cmd: shown.replace(sv.bin, sv.name === 'parleyd-base' ? BASE_SRC : sv.bin === PARLEYD ? PARLEYD_SRC : sv.bin) });
    });
  });
}

// ---------------------------------------------------------------- run

const started = new Date();
const runs = [];
console.error(`compare: ${reps} round(s) x ${scenarios.length} scenario(s); servers: ${servers.map((s) => s.name).join(', ')}`);
for (let r = 0; r < reps; r++) {
  for (const sc of scenarios) {
    if (sc.once && r > 0) continue;
    const svs = servers.filter((s) => (!s.only || s.only.test(sc.id)) && !(sc.notOn || []).includes(s.name) && (!sc.v2 || V2_SERVERS.includes(s.name)));
    const rot = svs.map((_, i) => svs[(i + r) % svs.length]);
    for (const sv of rot) {
      let best = null;
      for (let attempt = 0; attempt <= retries; attempt++) {
        const quiet = await waitQuiet();
        console.error(`compare: round ${r + 1}/${reps} ${sc.id} ${sv.name}${attempt ? ` attempt ${attempt + 1}` : ''} (machine busy ${quiet.busy_cores_before} cores, waited ${quiet.waited_s}s)`);
        const t0 = Date.now();
        const c = { quiet, attempts: attempt + 1, ...(await runCell(sc, sv)) };
        c.cell_s = Math.round((Date.now() - t0) / 100) / 10;
        const sc_ = c.result?.setup_cache;
        console.error(`compare: ${sc.id} ${sv.name}: ${c.cell_s}s (setup ${c.result?.setup_s ?? '-'}s${sc_ && sc_.state !== 'off' ? `, cache ${sc_.state}` : ''}; ${Math.round((Date.now() - started) / 1000)}s since the start)`);
        const o = otherCores(c.result);
        if (!best || (o !== null && (otherCores(best.result) ?? Infinity) > o)) best = c;
        if (o === null || o <= maxOther || !c.result) break;
        console.error(`compare: other processes used ${o.toFixed(2)} cores during the cell${attempt < retries ? ': running it again' : ' (no retry left: kept the least disturbed attempt)'}`);
      }
      const cell = best;
      runs.push({ round: r + 1, scenario: sc.id, server: sv.name, ...cell });
      if (cell.code !== 0) console.error(`compare: ${sc.id} ${sv.name}: exit ${cell.code}${cell.result ? ` problems: ${JSON.stringify(cell.result.problems).slice(0, 600)}` : ''}`);
    }
  }
}

// ---------------------------------------------------------------- report

const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const METRICS = {
  'send-throughput': [
    ['acked msg/s', (r) => r.acked_per_s, 'higher'],
    ['ack p50 ms', (r) => r.ack_latency_ms?.p50, 'lower'],
    ['ack p99 ms', (r) => r.ack_latency_ms?.p99, 'lower'],
    ['server CPU us/msg', (r) => r.server_cpu_us_per_msg, 'lower'],
  ],
  fanout: [
    ['delivered frames/s', (r) => r.delivered_per_s, 'higher'],
    ['e2e p50 ms', (r) => r.e2e_latency_ms?.p50, 'lower'],
    ['e2e p99 ms', (r) => r.e2e_latency_ms?.p99, 'lower'],
    ['server CPU us/delivery', (r) => r.server_cpu_us_per_delivery, 'lower'],
  ],
  'idle-memory': [
    ['KiB per connection', (r) => r.kib_per_conn, 'lower'],
    ['RSS with all sockets, KiB', (r) => r.rss_after_kib, 'lower'],
  ],
  // the C generator (bench/load/parley-load); latencies are send -> deliver (or -> ack)
  'load/writes': [
    ['acked msg/s', (r) => r.acks_per_s, 'higher'],
    ['ack p50 ms', (r) => r.ack_latency_ms?.p50, 'lower'],
    ['ack p99 ms', (r) => r.ack_latency_ms?.p99, 'lower'],
    ['server CPU us/msg', (r) => r.server_cpu_us_per_ack, 'lower'],
  ],
  'load/writes-group': [
    ['acked msg/s', (r) => r.acks_per_s, 'higher'],
    ['delivered frames/s', (r) => r.deliveries_per_s, 'higher'],
    ['ack p99 ms', (r) => r.ack_latency_ms?.p99, 'lower'],
    ['server CPU us/msg', (r) => r.server_cpu_us_per_ack, 'lower'],
  ],
  'load/fanout': [
    ['delivered frames/s', (r) => r.deliveries_per_s, 'higher'],
    ['e2e p50 ms', (r) => r.latency_ms?.p50, 'lower'],
    ['e2e p99 ms', (r) => r.latency_ms?.p99, 'lower'],
    ['e2e p99.9 ms', (r) => r.latency_ms?.p999, 'lower'],
    ['server CPU us/delivery', (r) => r.server_cpu_us_per_delivery, 'lower'],
  ],
  'load/latency-group': [
    ['e2e p50 ms', (r) => r.latency_ms?.p50, 'lower'],
    ['e2e p99 ms', (r) => r.latency_ms?.p99, 'lower'],
    ['e2e p99.9 ms', (r) => r.latency_ms?.p999, 'lower'],
    ['server CPU us/delivery', (r) => r.server_cpu_us_per_delivery, 'lower'],
  ],
  'load/latency-pairs': [
    ['e2e p50 ms', (r) => r.latency_ms?.p50, 'lower'],
    ['e2e p99 ms', (r) => r.latency_ms?.p99, 'lower'],
    ['e2e p99.9 ms', (r) => r.latency_ms?.p999, 'lower'],
    ['server CPU us/msg', (r) => r.server_cpu_us_per_ack, 'lower'],
  ],
  // update frames: e2e latency only for edits (their body carries the send time)
  'load/fanout-react': [
    ['delivered updates/s', (r) => r.deliveries_per_s, 'higher'],
    ['ack p50 ms', (r) => r.ack_latency_ms?.p50, 'lower'],
    ['server CPU us/delivery', (r) => r.server_cpu_us_per_delivery, 'lower'],
    ['server CPU us/change', (r) => r.server_cpu_us_per_ack, 'lower'],
  ],
  'load/fanout-edit': [
    ['delivered updates/s', (r) => r.deliveries_per_s, 'higher'],
    ['e2e p50 ms', (r) => r.latency_ms?.p50, 'lower'],
    ['e2e p99 ms', (r) => r.latency_ms?.p99, 'lower'],
    ['server CPU us/delivery', (r) => r.server_cpu_us_per_delivery, 'lower'],
    ['server CPU us/change', (r) => r.server_cpu_us_per_ack, 'lower'],
  ],
  'load/pairs': [
    ['e2e p50 ms', (r) => r.latency_ms?.p50, 'lower'],
    ['e2e p99 ms', (r) => r.latency_ms?.p99, 'lower'],
    ['e2e p99.9 ms', (r) => r.latency_ms?.p999, 'lower'],
    ['server CPU us/msg', (r) => r.server_cpu_us_per_ack, 'lower'],
    ['server cores', (r) => r.server_cores, 'lower'],
  ],
  'load/conns': [
    ['KiB per connection', (r) => r.kib_per_conn, 'lower'],
    ['RSS with all sockets, KiB', (r) => r.rss_after_kib, 'lower'],
    ['bytes per connection (fit)', (r) => r.fit?.bytes_per_conn, 'lower'],
  ],
};
// load/fanout-m10 and -m100 (the group-size sweep) and the target cells -1x1000 and -100x10
// report what load/fanout does
const metricsOf = (id) => METRICS[id] || METRICS[id.replace(/-(m\d+|1x1000|100x10)$/, '')] || METRICS[id.split('/')[0]];
const fmt = (x) => (x === null || x === undefined ? '-' : Math.abs(x) >= 100 ? String(Math.round(x)) : String(Math.round(x * 100) / 100));
const ratio = (a, b) => (a === null || b === null || !b ? '-' : `${(a / b).toFixed(2)}x`);

const names = servers.map((s) => s.name);
const lines = [];
lines.push(`Parley benchmark, ${started.toISOString()}: ${os.cpus().length} cores (${os.cpus()[0]?.model}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, node ${process.version}; median of ${reps} round(s); client and server share the machine.`);
lines.push('');
lines.push(`parleyd: ${PARLEYD_SRC} (sha256 ${parleydSha}; checkout ${gitRev})${PARLEYD_BASE ? `; parleyd-base: ${opt['base-label'] || BASE_SRC} (${BASE_SRC}, sha256 ${baseSha})` : ''}; node-ref: ${NODE_REF}; uws-ref: ${UWS_REF}. All with PARLEY_SEND_RATE=0 PARLEY_SEND_BURST=0.${scenarios.some((x) => x.tool === 'load') ? ` C generator: ${LOAD_SRC}.` : ''}`);
lines.push('');
const head = ['scenario', 'metric', ...names];
// parleyd / every other server
const ratioCols = names.includes('parleyd') ? names.filter((n) => n !== 'parleyd').map((n) => [`parleyd/${n}`, n]) : [];
head.push(...ratioCols.map((c) => c[0]), 'better');
lines.push(`| ${head.join(' | ')} |`);
lines.push(`|${head.map(() => '---').join('|')}|`);
const medians = {};
for (const sc of scenarios) {
  for (const [mname, get, better] of metricsOf(sc.id)) {
    const row = [sc.id, mname];
    const med = {};
    for (const n of names) {
      const vals = runs.filter((x) => x.scenario === sc.id && x.server === n && x.result).map((x) => get(x.result));
      med[n] = median(vals);
      row.push(vals.length ? fmt(med[n]) : '');
    }
    for (const [, base] of ratioCols) row.push(med[base] === null || med[base] === undefined ? '' : ratio(med.parleyd, med[base]));
    row.push(better);
    medians[`${sc.id} ${mname}`] = med;
    lines.push(`| ${row.join(' | ')} |`);
  }
}
lines.push('');
lines.push('Per round (main metric; * = the cell reported problems, see the JSON):');
lines.push('');
lines.push(`| scenario | server | ${Array.from({ length: reps }, (_, i) => `round ${i + 1}`).join(' | ')} | other CPU (cores) |`);
lines.push(`|---|---|${Array.from({ length: reps }, () => '---').join('|')}|---|`);
for (const sc of scenarios) {
  const [, get] = metricsOf(sc.id)[0];
  for (const n of names) {
    const cells = runs.filter((x) => x.scenario === sc.id && x.server === n);
    if (!cells.length) continue;
    // a scenario run once (load/conns) has no cell in the later rounds: '-'
    const vals = Array.from({ length: reps }, (_, i) => cells.find((x) => x.round === i + 1)).map((x) => (!x ? '-' : (x.result ? fmt(get(x.result)) : 'FAILED') + (x.code !== 0 ? '*' : '')));
    const other = cells.map((x) => (x.result?.cpu?.other_cpu_s != null && x.result.cpu.wall_s ? (x.result.cpu.other_cpu_s / x.result.cpu.wall_s).toFixed(2) : '-'));
    lines.push(`| ${sc.id} | ${n} | ${vals.join(' | ')} | ${other.join(' / ')} |`);
  }
}
if (names.includes('parleyd') && names.length > 1) {
  lines.push('');
  lines.push('Ratios parleyd / X of the main metric, per round (the spread shows the noise):');
  lines.push('');
  lines.push(`| scenario | ratio | ${Array.from({ length: reps }, (_, i) => `round ${i + 1}`).join(' | ')} |`);
  lines.push(`|---|---|${Array.from({ length: reps }, () => '---').join('|')}|`);
  for (const sc of scenarios) {
    const [, get] = metricsOf(sc.id)[0];
    const val = (r, n) => { const c = runs.find((x) => x.round === r && x.scenario === sc.id && x.server === n); return c?.result ? get(c.result) : null; };
    for (const n of names.filter((x) => x !== 'parleyd')) {
      const cells = Array.from({ length: reps }, (_, i) => ratio(val(i + 1, 'parleyd'), val(i + 1, n)));
      if (cells.every((c) => c === '-')) continue;
      lines.push(`| ${sc.id} | parleyd/${n} | ${cells.join(' | ')} |`);
    }
  }
}
// The regression check against the base build: every metric of the table that is worse
// for parleyd than for parleyd-base by more than --regress-threshold.
const regressions = [];
if (names.includes('parleyd-base')) {
  const thr = Number(opt['regress-threshold']);
  for (const sc of scenarios) {
    for (const [mname, , better] of metricsOf(sc.id)) {
      const m = medians[`${sc.id} ${mname}`];
      if (!m || m.parleyd == null || !m['parleyd-base']) continue;
      const r = m.parleyd / m['parleyd-base'];
      if ((better === 'higher' && r < 1 - thr) || (better === 'lower' && r > 1 + thr)) regressions.push(`${sc.id} ${mname}: parleyd ${fmt(m.parleyd)}, parleyd-base ${fmt(m['parleyd-base'])} (${r.toFixed(2)}x, ${better} is better)`);
    }
  }
  lines.push('');
  lines.push(regressions.length
    ? `Worse than parleyd-base by more than ${Math.round(thr * 100)}% (check against the per-round spread above before believing it):`
    : `No metric is worse than parleyd-base by more than ${Math.round(thr * 100)}%.`);
  for (const x of regressions) lines.push(`- ${x}`);
}
const bad = runs.filter((x) => x.code !== 0);
if (bad.length) {
  lines.push('');
  lines.push('Problems:');
  for (const b of bad) {
    lines.push(`- round ${b.round} ${b.scenario} ${b.server}: exit ${b.code}; ${b.result ? JSON.stringify(b.result.problems).slice(0, 800) : b.stderr.slice(-800)}`);
    lines.push(`  reproduce: ${b.cmd}`);
  }
}
console.log(lines.join('\n'));

const out = opt.out || path.join(os.tmpdir(), `parley-bench-${started.toISOString().replace(/[:.]/g, '-')}.json`);
mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
const betters = Object.fromEntries(scenarios.flatMap((sc) => metricsOf(sc.id).map(([m, , b]) => [`${sc.id} ${m}`, b])));
writeFileSync(out, JSON.stringify({ started: started.toISOString(), finished: new Date().toISOString(), wall_s: Math.round((Date.now() - started) / 1000), setup_cache: CACHE ? { dir: CACHE, pool_users: POOL } : null, args: process.argv.slice(2), reps, quick: Q, suite: opt.suite, better: betters, parleyd: { path: PARLEYD_SRC, sha256_16: parleydSha, checkout: gitRev }, base: PARLEYD_BASE ? { path: BASE_SRC, label: opt['base-label'] || null, sha256_16: baseSha } : null, servers: servers.map(({ name, bin, env }) => ({ name, bin: name === 'parleyd' ? PARLEYD_SRC : name === 'parleyd-base' ? BASE_SRC : bin, env })), medians, regressions, runs }, null, 1));
if (opt.out) writeFileSync(out.replace(/\.json$/, '') + '.md', lines.join('\n') + '\n');
console.error(`compare: raw results in ${out}${opt.out ? ` (the table also in ${out.replace(/\.json$/, '')}.md)` : ''}`);
{
  const wall = (Date.now() - started) / 1000;
  const loadCells = runs.filter((x) => x.result?.setup_cache);
  const hits = loadCells.filter((x) => x.result.setup_cache.state === 'hit').length;
  const setupS = runs.reduce((a, x) => a + (x.result?.setup_s || 0), 0);
  console.error(`compare: done: ${runs.length} cells (${reps} round(s), ${bad.length} with problems) in ${Math.floor(wall / 60)} min ${Math.round(wall % 60)} s wall; setup ${Math.round(setupS)} s of it${CACHE ? `, from the setup cache in ${hits} of ${loadCells.length} load cells (${CACHE})` : ', setup cache off'}; load average now ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
}
process.exit(bad.some((b) => !b.result || b.result.problems?.some((p) => /crash|died|run_failed|server_bad_exit/.test(p.kind))) ? 1 : 0);
