#!/usr/bin/env node
// compare: runs the parley-bench scenarios against parleyd and the reference servers in ONE run
// on one machine, and prints a Markdown table of medians and ratios (parleyd / baseline).
// bench/run.sh is the usual way in; it passes its arguments here.
//
//   node bench/compare.mjs [--reps 3] [--quick] [--only send-throughput/group,fanout,...]
//                          [--servers parleyd,parleyd-batch1,node-ref,uws-ref|all] [--out results.json]
//                          [--quiet-cores 0.3] [--quiet-max-wait 120] [--max-other-cores 0.25] [--retries 2]
//
// Servers (each scenario gets a fresh server process and a fresh data directory):
//   parleyd         $PARLEYD, else build/release/parleyd, default batching
//   parleyd-batch1  the same binary with PARLEY_BATCH_MAX=1 (the batching writer turned off);
//                   run for send-throughput only
//   node-ref        $NODE_REF, else ../shared/baselines/node-ref/parleyd-node
//   uws-ref         $UWS_REF,  else ../shared/baselines/uws-ref/parleyd-uws
//   parleyd-notrim  (only with --servers all or by name) parleyd with
//                   GLIBC_TUNABLES=glibc.malloc.trim_threshold=67108864, a diagnostic
// All of them get PARLEY_SEND_RATE=0 and PARLEY_SEND_BURST=0 (no rate limit) from parley-bench.
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

const { values: opt } = parseArgs({
  options: {
    reps: { type: 'string', default: '3' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    servers: { type: 'string' },
    out: { type: 'string' },
    'quiet-cores': { type: 'string', default: '0.3' },
    'quiet-max-wait': { type: 'string', default: '120' },
    'max-other-cores': { type: 'string', default: '0.25' },
    retries: { type: 'string', default: '2' },
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
let gitRev = process.env.PARLEYD ? 'PARLEYD given: see its build' : null;
if (!gitRev) try {
  gitRev = execFileSync('git', ['-C', root, 'describe', '--always', '--dirty'], { encoding: 'utf8' }).trim();
} catch { /* not a checkout */ }
const NODE_REF = path.resolve(process.env.NODE_REF || path.join(root, '../shared/baselines/node-ref/parleyd-node'));
const UWS_REF = path.resolve(process.env.UWS_REF || path.join(root, '../shared/baselines/uws-ref/parleyd-uws'));

const ALL_SERVERS = [
  { name: 'parleyd', bin: PARLEYD, env: [] },
  { name: 'parleyd-batch1', bin: PARLEYD, env: ['PARLEY_BATCH_MAX=1'], only: /^send-throughput/ },
  { name: 'node-ref', bin: NODE_REF, env: [] },
  { name: 'uws-ref', bin: UWS_REF, env: [] },
  // Diagnostic, only with --servers all (or named): parleyd with glibc's heap trimming
  // effectively off, to show what the writer thread's madvise churn costs (docs/BENCHMARKS.md).
  { name: 'parleyd-notrim', bin: PARLEYD, env: ['GLIBC_TUNABLES=glibc.malloc.trim_threshold=67108864'], only: /^(send-throughput|fanout)/, optIn: true },
];

const Q = opt.quick;
// Sizes are modest on purpose: the machine this was written on has 2 cores, shared by the
// server and this Node client.
const ALL_SCENARIOS = [
  { id: 'send-throughput/group', args: ['send-throughput', '--mode', 'group', '--senders', '50', '--window', '32', '--messages', Q ? '4000' : '20000'] },
  { id: 'send-throughput/direct', args: ['send-throughput', '--mode', 'direct', '--senders', '50', '--window', '32', '--messages', Q ? '4000' : '20000'] },
  { id: 'fanout', args: ['fanout', '--members', '100', '--senders', '4', '--window', '8', '--messages', Q ? '300' : '3000'] },
  { id: 'idle-memory', args: ['idle-memory', '--conns', Q ? '500' : '2000', '--users', '100'] },
];

const pick = (list, csv) => {
  if (!csv) return list;
  const want = csv.split(',').map((s) => s.trim());
  for (const w of want) if (!list.some((x) => (x.id || x.name) === w)) throw new Error(`unknown: ${w}`);
  return list.filter((x) => want.includes(x.id || x.name));
};
const scenarios = pick(ALL_SCENARIOS, opt.only);
const servers = (opt.servers === 'all' ? ALL_SERVERS : opt.servers ? pick(ALL_SERVERS, opt.servers) : ALL_SERVERS.filter((s) => !s.optIn)).filter((s) => {
  if (existsSync(s.bin)) return true;
  console.error(`compare: ${s.name}: ${s.bin} not found, skipped (set PARLEYD / NODE_REF / UWS_REF)`);
  return false;
});
const reps = Math.max(1, Number(opt.reps) || 1);
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
// Cores kept busy by everything on the machine over the next second.
async function busyCores() {
  const a = busyJiffies();
  await sleep(1000);
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
    const args = [bench, ...sc.args, '--json', '--server', sv.bin, '--name', sv.name, ...sv.env.flatMap((e) => ['--env', e])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; process.stderr.write(d); });
    const killer = setTimeout(() => child.kill('SIGKILL'), 10 * 60 * 1000);
    child.on('exit', (code) => {
      clearTimeout(killer);
      let r = null;
      try { r = JSON.parse(out.trim().split('\n').pop()); } catch { /* no result */ }
      resolve({ code, result: r, stderr: err.slice(-4000), cmd: `node ${path.relative(process.cwd(), bench)} ${args.slice(1).map((a) => (/[\s]/.test(a) ? `'${a}'` : a)).join(' ')}` });
    });
  });
}

// ---------------------------------------------------------------- run

const started = new Date();
const runs = [];
console.error(`compare: ${reps} round(s) x ${scenarios.length} scenario(s); servers: ${servers.map((s) => s.name).join(', ')}`);
for (let r = 0; r < reps; r++) {
  for (const sc of scenarios) {
    const svs = servers.filter((s) => !s.only || s.only.test(sc.id));
    const rot = svs.map((_, i) => svs[(i + r) % svs.length]);
    for (const sv of rot) {
      let best = null;
      for (let attempt = 0; attempt <= retries; attempt++) {
        const quiet = await waitQuiet();
        console.error(`compare: round ${r + 1}/${reps} ${sc.id} ${sv.name}${attempt ? ` attempt ${attempt + 1}` : ''} (machine busy ${quiet.busy_cores_before} cores, waited ${quiet.waited_s}s)`);
        const c = { quiet, attempts: attempt + 1, ...(await runCell(sc, sv)) };
        const o = otherCores(c.result);
        if (!best || (o !== null && (otherCores(best.result) ?? Infinity) > o)) best = c;
        if (o === null || o <= maxOther || !c.result) break;
        console.error(`compare: other processes used ${o.toFixed(2)} cores during the cell: running it again`);
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
};
const fmt = (x) => (x === null || x === undefined ? '-' : Math.abs(x) >= 100 ? String(Math.round(x)) : String(Math.round(x * 100) / 100));
const ratio = (a, b) => (a === null || b === null || !b ? '-' : `${(a / b).toFixed(2)}x`);

const names = servers.map((s) => s.name);
const lines = [];
lines.push(`Parley benchmark, ${started.toISOString()}: ${os.cpus().length} cores (${os.cpus()[0]?.model}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, node ${process.version}; median of ${reps} round(s); client and server share the machine.`);
lines.push('');
lines.push(`parleyd: ${PARLEYD_SRC} (sha256 ${parleydSha}; checkout ${gitRev}); node-ref: ${NODE_REF}; uws-ref: ${UWS_REF}. All with PARLEY_SEND_RATE=0 PARLEY_SEND_BURST=0.`);
lines.push('');
const head = ['scenario', 'metric', ...names];
// parleyd / every other server
const ratioCols = names.includes('parleyd') ? names.filter((n) => n !== 'parleyd').map((n) => [`parleyd/${n}`, n]) : [];
head.push(...ratioCols.map((c) => c[0]), 'better');
lines.push(`| ${head.join(' | ')} |`);
lines.push(`|${head.map(() => '---').join('|')}|`);
const medians = {};
for (const sc of scenarios) {
  for (const [mname, get, better] of METRICS[sc.id.split('/')[0]]) {
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
  const [, get] = METRICS[sc.id.split('/')[0]][0];
  for (const n of names) {
    const cells = runs.filter((x) => x.scenario === sc.id && x.server === n);
    if (!cells.length) continue;
    const vals = cells.map((x) => (x.result ? fmt(get(x.result)) : 'FAILED') + (x.code !== 0 ? '*' : ''));
    const other = cells.map((x) => (x.result?.cpu?.other_cpu_s != null && x.result.cpu.wall_s ? (x.result.cpu.other_cpu_s / x.result.cpu.wall_s).toFixed(2) : '-'));
    lines.push(`| ${sc.id} | ${n} | ${vals.join(' | ')} | ${other.join(' / ')} |`);
  }
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
writeFileSync(out, JSON.stringify({ started: started.toISOString(), reps, quick: Q, parleyd: { path: PARLEYD_SRC, sha256_16: parleydSha, checkout: gitRev }, servers: servers.map(({ name, bin, env }) => ({ name, bin, env })), medians, runs }, null, 1));
console.error(`compare: raw results in ${out}`);
process.exit(bad.some((b) => !b.result || b.result.problems?.some((p) => /crash|died|run_failed/.test(p.kind))) ? 1 : 0);
