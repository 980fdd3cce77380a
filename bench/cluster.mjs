#!/usr/bin/env node
// cluster: what cluster mode costs, measured in ONE run on one machine, as ratios against a
// baseline of the same run. bench/cluster.sh is the way in (make bench runs it after run.sh).
//
//   node bench/cluster.mjs [--quick] [--reps 3] [--only writes,cost] [--dir /tmp/parley-bench-cluster]
//                          [--port 21080] [--out FILE.json] [--quiet-cores 0.3] [--quiet-max-wait 20]
//                          [--max-other-cores 0.5] [--retries 1] [--budget-min 60]
//                          [--env KEY=VALUE ...]   (more environment for every parleyd, e.g.
//                                                   PARLEY_BATCH_INTERVAL_MS=10)
//
// Group "writes": the batched write path into PostgreSQL against one insert per transaction.
//   One parleyd (started by parley-load) with PARLEY_DB_URL on a throwaway PostgreSQL
//   (scripts/pgtmp, DIR/pg-writes, port PORT+700, with pg_stat_statements), parley-load
//   `writes --senders 50 --window 32`: servers pg (default batching) and pg-batch1
//   (PARLEY_BATCH_MAX=1), and the same two on SQLite (embedded mode) for reference.
//   Target: pg / pg-batch1 >= 10x in acked msg/s.
// Group "cost": CPU per delivery summed over EVERY process of the deployment (each node,
//   Redis, HAProxy, the PostgreSQL primary and replica with all their backends: utime+stime
//   from /proc/PID/stat, a postmaster with its children), parley-load's --cpu-pid/--cpu-tree.
//   Deployments: c3 = scripts/cluster up --nodes 3 (DIR/c3, port PORT), c1 = the same with one
//   node (DIR/c1, port PORT+400: its own Redis, PostgreSQL primary + replica and HAProxy), and
//   sqlite = one embedded parleyd (SQLite, no Redis, no HAProxy: a second reference). Clients go
//   through HAProxy (leastconn, so they spread over the nodes) for c3 and c1, to the node for
//   sqlite. Same load everywhere (open loop, fixed rates): a fan-out into groups of 50 and
//   direct pairs. Target: c3 / c1 <= 1.5x in CPU per delivery. Two shared cores cannot show
//   more throughput from more nodes: these are cost figures, not speed.
//
// Per cell, besides parley-load's JSON: the WAL between the start of the warm-up and the end of
// the drain (pg_waldump --stats=record: COMMIT records = write transactions), Redis PUBLISH
// calls, pg_stat_statements (writes group), and the connections each node held.
//
// Cells run in rounds with the order rotated per round; before each cell the runner waits for
// a quiet machine (other processes below --quiet-cores cores, at most --quiet-max-wait s), and a
// cell during which other processes used more than --max-other-cores cores is run again (at
// most --retries times; the least disturbed attempt is kept). Figures are medians over rounds.
// Everything runs on 127.0.0.1; everything started is stopped at the end (also on SIGINT/TERM):
// the clusters by `scripts/cluster down --clean`, the writes PostgreSQL by `pgtmp stop`.
// Ports: PORT..PORT+3, +100, +101, +200 (c3), +400..+401, +500, +501, +600 (c1), +700 (writes);
// the default 21080 keeps them below the kernel's ephemeral range (32768-60999), where the
// clients' own connections could hold one.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync, mkdtempSync, copyFileSync, chmodSync, rmSync, appendFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const { values: opt } = parseArgs({
  options: {
    reps: { type: 'string' },
    quick: { type: 'boolean', default: false },
    only: { type: 'string', default: 'writes,cost' },
    dir: { type: 'string', default: '/tmp/parley-bench-cluster' },
    port: { type: 'string', default: '21080' },
    out: { type: 'string' },
    'quiet-cores': { type: 'string', default: '0.3' },
    'quiet-max-wait': { type: 'string', default: '20' },
    'max-other-cores': { type: 'string', default: '0.5' },
    retries: { type: 'string', default: '1' },
    'budget-min': { type: 'string', default: '60' },
    env: { type: 'string', multiple: true, default: [] },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  const text = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n');
  console.log(text.slice(1, text.findIndex((l) => l.startsWith('import '))).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}
const Q = opt.quick;
const reps = Math.max(1, Number(opt.reps ?? (Q ? 1 : 3)) || 1);
const groups = opt.only.split(',').map((s) => s.trim());
for (const g of groups) if (!['writes', 'cost'].includes(g)) throw new Error(`--only: writes and/or cost, got ${g}`);
const PORT = Number(opt.port);
if (!(PORT >= 1024 && PORT <= 64000)) throw new Error('--port: 1024..64000');
const DIR = path.resolve(opt.dir);
const quietCores = Number(opt['quiet-cores']);
const quietMaxWait = Number(opt['quiet-max-wait']) * 1000;
const maxOther = Number(opt['max-other-cores']);
const retries = Math.max(0, Number(opt.retries) || 0);
const deadline = Date.now() + Number(opt['budget-min']) * 60000;
const PGBIN = process.env.PGBIN || '/usr/lib/postgresql/15/bin';
const CLUSTER = path.join(root, 'scripts/cluster');
const PGTMP = path.join(root, 'scripts/pgtmp');

// Private copies of the binaries: a rebuild of the tree during the run cannot change them.
const PARLEYD_SRC = path.resolve(process.env.PARLEYD || path.join(root, 'build/release/parleyd'));
const LOAD_SRC = path.resolve(process.env.PARLEY_LOAD || path.join(root, 'build/release/bench/load/parley-load'));
for (const [what, p] of [['parleyd', PARLEYD_SRC], ['parley-load', LOAD_SRC]])
  if (!existsSync(p)) { console.error(`cluster: ${what} ${p} is missing: make build`); process.exit(2); }
const binDir = mkdtempSync(path.join(os.tmpdir(), 'parley-bench-bin-'));
const PARLEYD = path.join(binDir, 'parleyd');
const LOAD = path.join(binDir, 'parley-load');
copyFileSync(PARLEYD_SRC, PARLEYD); chmodSync(PARLEYD, 0o755);
copyFileSync(LOAD_SRC, LOAD); chmodSync(LOAD, 0o755);
let gitRev = null;
// the checkout the binary was built in (a bench/base-build.sh worktree names its commit)
try { gitRev = execFileSync('git', ['-C', path.dirname(PARLEYD_SRC), 'describe', '--always', '--dirty'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(); } catch { /* not a checkout */ }

// parleyd drains for 15 s on SIGTERM by default (PARLEY_DRAIN_*): not here (the nodes and the
// servers parley-load starts inherit this)
process.env.PARLEY_DRAIN_DELAY_S ??= '0';
process.env.PARLEY_DRAIN_SECONDS ??= '0';

// ---------------------------------------------------------------- what we start, and stopping it

const log = (s) => console.error(`cluster: ${s}`);
const clustersUp = [];
let pgWritesUp = null;
let child = null;
let cleaned = false;
function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (child && child.exitCode === null) try { child.kill('SIGTERM'); } catch { /* gone */ }
  for (const d of clustersUp) {
    try { execFileSync(CLUSTER, ['down', '--dir', d, '--clean'], { stdio: ['ignore', 'ignore', 'inherit'] }); } catch (e) { log(`down ${d}: ${e.message}`); }
    // a cluster whose `up` failed half-way: its PostgreSQL servers, if any, then the directory
    for (const pg of ['pg-replica', 'pg-primary']) {
      if (existsSync(path.join(d, pg, 'postmaster.pid'))) try { execFileSync(PGTMP, ['stop', path.join(d, pg)], { stdio: 'ignore' }); } catch { /* stopped */ }
    }
    rmSync(d, { recursive: true, force: true });
  }
  if (pgWritesUp) {
    try { execFileSync(PGTMP, ['stop', pgWritesUp], { stdio: ['ignore', 'ignore', 'inherit'] }); } catch (e) { log(`pgtmp stop ${pgWritesUp}: ${e.message}`); }
    rmSync(pgWritesUp, { recursive: true, force: true });
  }
  rmSync(binDir, { recursive: true, force: true });
  try { if (!readdirSync(DIR).length) rmSync(DIR, { recursive: true }); } catch { /* not there */ }
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => { log(`${sig}: stopping what was started`); process.exit(130); });

const sh = (cmd, args, o = {}) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...o });
const readPid = (f) => Number(readFileSync(f, 'utf8').split('\n')[0].trim());

// The environment of every node: what parley-load gives the servers it starts (the per-address
// abuse limits off: every generated client comes from 127/8 and floods on purpose).
const NODE_ENV = {
  PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0', PARLEY_CONNS_PER_ADDR: '0', PARLEY_SIGNUPS_PER_MIN: '0',
  PARLEY_CONVS_PER_MIN: '0', PARLEY_LOGIN_FAILS: '0', PARLEY_READ_RATE: '0', PARLEY_TYPING_MS: '0',
  PARLEY_WRITER_QUEUE: '100000000', PARLEY_LOG_LEVEL: 'warn', PARLEY_WORKERS: '2',
};
for (const e of opt.env) {
  const i = e.indexOf('=');
  if (i < 1) throw new Error(`--env expects KEY=VALUE, got ${e}`);
  NODE_ENV[e.slice(0, i)] = e.slice(i + 1);
}
// for the servers parley-load starts (the sqlite reference, the writes group)
const EXTRA_ENV = opt.env.flatMap((e) => ['--env', e]);

function clusterUp(name, port, nodes) {
  const dir = path.join(DIR, name);
  try { execFileSync(CLUSTER, ['down', '--dir', dir, '--clean'], { stdio: 'ignore' }); } catch { /* none */ }
  rmSync(dir, { recursive: true, force: true });
  const args = ['up', '--dir', dir, '--port', String(port), '--nodes', String(nodes)];
  log(`scripts/cluster ${args.join(' ')}`);
  clustersUp.push(dir);
  // the primary made first, with pg_stat_statements (the replica copies its configuration)
  pgInstrumented(path.join(dir, 'pg-primary'), port + 100);
  sh(CLUSTER, args, { env: { ...process.env, ...NODE_ENV, PARLEYD }, stdio: ['ignore', 'pipe', 'inherit'] });
  const env = Object.fromEntries(sh(CLUSTER, ['env', '--dir', dir]).split('\n').filter((l) => l.includes('='))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1).replace(/^"|"$/g, '')]));
  const pids = [];
  for (let n = 1; n <= nodes; n++) pids.push({ role: 'node', name: `node${n}`, pid: readPid(path.join(dir, `node-${n}.pid`)), port: port + n });
  pids.push({ role: 'redis', name: 'redis', pid: readPid(path.join(dir, 'redis-1.pid')) });
  pids.push({ role: 'haproxy', name: 'haproxy', pid: readPid(path.join(dir, 'haproxy.pid')) });
  pids.push({ role: 'pg-primary', name: 'pg-primary', pid: readPid(path.join(dir, 'pg-primary/postmaster.pid')), tree: true });
  pids.push({ role: 'pg-replica', name: 'pg-replica', pid: readPid(path.join(dir, 'pg-replica/postmaster.pid')), tree: true });
  psql(path.join(dir, 'pg-primary'), 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  return { name, dir, port, nodes, env, pids, pgdir: path.join(dir, 'pg-primary'), replicadir: path.join(dir, 'pg-replica'), redisPort: Number(env.redis_port_1), cmd: `scripts/cluster ${args.join(' ')}` };
}

// Fresh node processes (scripts/cluster stop-node / start-node), so that memory per connection is
// not hidden by heap that earlier cells left free; HAProxy's health check takes them back in.
function restartNodes(cl) {
  for (const p of cl.pids.filter((x) => x.role === 'node')) {
    const n = p.name.replace('node', '');
    sh(CLUSTER, ['stop-node', n, '--dir', cl.dir], { env: { ...process.env, ...NODE_ENV, PARLEYD } });
    sh(CLUSTER, ['start-node', n, '--dir', cl.dir], { env: { ...process.env, ...NODE_ENV, PARLEYD } });
    p.pid = readPid(path.join(cl.dir, `node-${n}.pid`));
  }
  // until HAProxy sees every node up again (check inter 1s, rise 2)
  const t0 = Date.now();
  while (Date.now() - t0 < 15000) {
    const st = sh(CLUSTER, ['haproxy', 'show servers state nodes', '--dir', cl.dir]).split('\n').map((l) => l.split(' ')).filter((f) => /^node\d+$/.test(f[3] || ''));
    if (st.length === cl.nodes && st.every((f) => f[5] === '2')) break; // srv_op_state 2: running
    execFileSync('sleep', ['0.5']);
  }
}

// initdb + start by scripts/pgtmp, then pg_stat_statements and WAL I/O timing, then stopped:
// the next `pgtmp start` (or scripts/cluster up) runs with them.
function pgInstrumented(dir, port) {
  sh(PGTMP, ['start', dir, String(port)]);
  appendFileSync(path.join(dir, 'postgresql.conf'), "\n# bench/cluster.mjs\nshared_preload_libraries = 'pg_stat_statements'\ntrack_wal_io_timing = on\n");
  sh(PGTMP, ['stop', dir]);
}
const STATEMENTS = "SELECT calls, round(total_exec_time::numeric, 1), rows, regexp_replace(left(query, 100), '\\s+', ' ', 'g') FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'parley') AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%pg_current_wal_lsn%' ORDER BY calls DESC LIMIT 16";
const statements = (pgdir) => psql(pgdir, STATEMENTS).trim().split('\n').filter(Boolean).map((l) => { const [calls, ms, rows, q] = l.split('\t'); return { calls: +calls, total_ms: +ms, rows: +rows, query: q }; });
const resetStatements = (pgdir) => psql(pgdir, 'SELECT pg_stat_statements_reset()');

// A throwaway PostgreSQL for the writes group, with pg_stat_statements (statements per batch).
function pgWritesStart() {
  const dir = path.join(DIR, 'pg-writes');
  if (existsSync(path.join(dir, 'PG_VERSION'))) try { execFileSync(PGTMP, ['stop', dir], { stdio: 'ignore' }); } catch { /* stopped */ }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(DIR, { recursive: true });
  pgWritesUp = dir;
  const port = String(PORT + 700);
  log(`scripts/pgtmp start ${dir} ${port} (+ shared_preload_libraries = pg_stat_statements)`);
  pgInstrumented(dir, port);
  const url = sh(PGTMP, ['start', dir, port]).trim();
  psql(dir, 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  return { dir, url, pgdir: dir, pid: readPid(path.join(dir, 'postmaster.pid')) };
}

// As the superuser, on the server's private unix socket (scripts/pgtmp's way in).
function psql(pgdir, sql) {
  const conf = readFileSync(path.join(pgdir, 'pgtmp.conf'), 'utf8');
  const port = conf.match(/^port = (\d+)$/m)[1];
  const sock = conf.match(/^unix_socket_directories = '(.*)'$/m)[1];
  const args = ['-u', 'postgres', '--', path.join(PGBIN, 'psql'), '-X', '-q', '-At', '-F', '\t', '-v', 'ON_ERROR_STOP=1', '-h', sock, '-p', port, '-U', 'postgres', '-d', 'parley', '-c', sql];
  return process.getuid() === 0 ? sh('runuser', args) : sh(args[3], args.slice(4));
}
// WAL writes and fsyncs with their time (track_wal_io_timing); backends report them at most
// once a second, so over a cell of 10 s they are right to about 10%.
const walIo = (pgdir) => { const [w, sy, wt, st] = psql(pgdir, 'SELECT wal_write, wal_sync, wal_write_time, wal_sync_time FROM pg_stat_wal').trim().split('\t').map(Number); return { wal_write: w, wal_sync: sy, wal_write_ms: wt, wal_sync_ms: st }; };
const lsn = (pgdir) => psql(pgdir, 'SELECT pg_current_wal_lsn()').trim();
// Write transactions (COMMIT records), records and bytes of WAL between two positions.
function walStats(pgdir, from, to) {
  try {
    const out = sh(path.join(PGBIN, 'pg_waldump'), ['-p', path.join(pgdir, 'pg_wal'), '-s', from, '-e', to, '--stats=record']);
    const num = (re) => { const m = out.match(re); return m ? Number(m[1]) : null; };
    const total = out.match(/^Total\s+(\d+)\s+(\d+).*?(\d+)\s+\[100%\]/m);
    const rec = {};
    for (const m of out.matchAll(/^(\S+\/\S+)\s+(\d+)\s/gm)) rec[m[1]] = Number(m[2]);
    return { commits: num(/^Transaction\/COMMIT\s+(\d+)/m) ?? 0, records: total ? Number(total[1]) : null, bytes: total ? Number(total[3]) : null, by_type: rec };
  } catch (e) {
    return { error: String(e.stderr || e.message).slice(0, 300) };
  }
}
function redisStats(port) {
  try {
    const out = sh('redis-cli', ['-p', String(port), 'info', 'all']);
    const publish = out.match(/^cmdstat_publish:calls=(\d+)/m);
    const f = (k) => Number((out.match(new RegExp(`^${k}:(\\d+)`, 'm')) || [])[1] ?? NaN);
    return { publish: publish ? Number(publish[1]) : 0, commands: f('total_commands_processed'), net_in: f('total_net_input_bytes'), net_out: f('total_net_output_bytes') };
  } catch (e) {
    return { error: String(e.message).slice(0, 200) };
  }
}
function connsPerNode(cl) {
  const out = {};
  for (const p of cl.pids.filter((x) => x.role === 'node')) {
    try { out[p.name] = sh('ss', ['-Htn', 'state', 'established', `( sport = :${p.port} )`]).split('\n').filter(Boolean).length; } catch { out[p.name] = null; }
  }
  return out;
}
// Memory and CPU of every process of a deployment, and the kernel's TCP memory.
function procSnap(pids) {
  const tck = 100; // USER_HZ
  const out = { t: Date.now(), tcp_mem_kib: null, by: {} };
  try { out.tcp_mem_kib = Number(readFileSync('/proc/net/sockstat', 'utf8').match(/^TCP:.* mem (\d+)/m)[1]) * 4; } catch { /* none */ }
  // the kernel's objects of a socket (root only): TCP sock, socket inode, file, epoll item
  try {
    out.sock_slab_kib = 0;
    for (const m of readFileSync('/proc/slabinfo', 'utf8').matchAll(/^(TCP|TCPv6|sock_inode_cache|filp|eventpoll_epi)\s+(\d+)\s+\d+\s+(\d+)/gm)) out.sock_slab_kib += (Number(m[2]) * Number(m[3])) / 1024;
  } catch { out.sock_slab_kib = null; }
  const cpuOf = (pid, tree, depth = 0) => {
    let st;
    try { st = readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { return 0; }
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    let c = (Number(f[11]) + Number(f[12]) + (tree ? Number(f[13]) + Number(f[14]) : 0)) / tck;
    if (tree && depth < 4) {
      let kids = [];
      try { for (const t of readdirSync(`/proc/${pid}/task`)) kids = kids.concat(readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean).map(Number)); } catch { /* gone */ }
      for (const k of kids) c += cpuOf(k, true, depth + 1);
    }
    return c;
  };
  for (const p of pids) {
    let rss = null;
    try { rss = Number(readFileSync(`/proc/${p.pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m)[1]); } catch { /* gone */ }
    out.by[p.name] = { role: p.role, cpu_s: cpuOf(p.pid, p.tree), rss_kib: p.tree ? null : rss };
  }
  return out;
}
// parleyd's own /metrics (PARLEY_METRICS_LISTEN): writer transactions and their time.
async function metrics(port) {
  try {
    const t = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    const g = (k) => Number((t.match(new RegExp(`^${k} (\\S+)`, 'm')) || [])[1] ?? NaN);
    return { batches: g('parley_batch_size_count'), batch_jobs: g('parley_batch_size_sum'), tx_count: g('parley_commit_duration_seconds_count'), tx_seconds: g('parley_commit_duration_seconds_sum') };
  } catch (e) {
    return { error: e.message };
  }
}
const delta = (a, b) => (a && b ? Object.fromEntries(Object.keys(b).filter((k) => typeof b[k] === 'number').map((k) => [k, b[k] - a[k]])) : null);

// ---------------------------------------------------------------- quiet machine

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function busyJiffies() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0), total: f.reduce((a, b) => a + b, 0) };
}
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
const otherCores = (res) => (res?.cpu?.other_cpu_s != null && res.cpu.wall_s ? res.cpu.other_cpu_s / res.cpu.wall_s : null);

// ---------------------------------------------------------------- one cell

// Runs parley-load; hooks at the first progress line of the warm-up, of the measurement and at
// the end of the drain (its stderr), for the snapshots of PostgreSQL and Redis.
function runLoad(args, hooks) {
  return new Promise((resolve) => {
    child = spawn(LOAD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '', buf = '';
    const seen = {};
    const pending = [];
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => {
      err += d;
      process.stderr.write(d);
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        // a hook runs at the first line of its phase ('measure'), or at the n-th ('opened#2')
        const m = line.match(/^\[[^\]]*\] \S+ (warmup|measure|done|opened):/);
        if (m) {
          const n = (seen[m[1]] = (seen[m[1]] || 0) + 1);
          for (const k of n === 1 ? [m[1], `${m[1]}#1`] : [`${m[1]}#${n}`])
            if (hooks[k]) pending.push(Promise.resolve().then(hooks[k]).catch((e) => log(`hook ${k}: ${e.message}`)));
        }
      }
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), 12 * 60 * 1000);
    child.on('exit', async (code) => {
      clearTimeout(killer);
      await Promise.all(pending);
      let r = null;
      try { r = JSON.parse(out.trim().split('\n').pop()); } catch { /* no result */ }
      resolve({ code, result: r, stderr: err.slice(-3000) });
    });
  });
}

const T = (full, quick) => (Q ? quick : full);
const timing = ['--warmup', T('2', '1'), '--duration', T('10', '4')];
const WRITES_ARGS = ['writes', '--senders', '50', '--window', '32', ...timing];
const CONNS = Number(T('5000', '1000'));
const SETTLE = Number(T('30', '12'));
const COST_SCENARIOS = [
  // groups of 50, as in the capacity model's example; 2 publishers per group, a fixed total rate
  { id: 'fanout', args: ['fanout', '--groups', T('2', '1'), '--members', '50', '--publishers', '2', '--rate', '500', ...timing] },
  { id: 'pairs', args: ['pairs', '--users', T('100', '50'), '--rate', '1000', ...timing] },
  // closed loop, as fast as it goes: full batches (48 senders: 16 per node)
  { id: 'writes', args: ['writes', '--senders', '48', '--window', '32', ...timing] },
  // idle authenticated WebSockets: memory per connection (every process and the kernel's TCP
  // memory) and idle CPU (heartbeats) over SETTLE s; round 1 only
  { id: 'conns', args: ['conns', '--conns', String(CONNS), '--users', '100', '--settle', String(SETTLE)], once: true },
];

async function cell(label, args, setupHooks) {
  let best = null;
  for (let attempt = 0; attempt <= retries; attempt++) {
    const quiet = await waitQuiet();
    log(`${label}${attempt ? ` attempt ${attempt + 1}` : ''} (machine busy ${quiet.busy_cores_before} cores, waited ${quiet.waited_s}s)`);
    const snaps = {};
    const hooks = setupHooks ? setupHooks(snaps) : {};
    const c = { quiet, attempts: attempt + 1, cmd: `build/release/bench/load/parley-load ${args.join(' ')}`, ...(await runLoad(args, hooks)), snaps };
    const o = otherCores(c.result);
    c.other_cores = o === null ? null : Math.round(o * 100) / 100;
    if (!best || (o !== null && (best.other_cores ?? Infinity) > o)) best = c;
    if (o === null || o <= maxOther || !c.result || Date.now() > deadline || attempt === retries) break;
    log(`other processes used ${o.toFixed(2)} cores during the cell: running it again`);
  }
  return best;
}

// ---------------------------------------------------------------- run

const started = new Date();
const runs = [];
const setup = {};
mkdirSync(DIR, { recursive: true });
log(`${reps} round(s); groups ${groups.join(', ')}; parleyd ${PARLEYD_SRC} (${gitRev}); directory ${DIR}, ports ${PORT}..${PORT + 701}`);

if (groups.includes('writes')) {
  const pg = pgWritesStart();
  setup.writes = { pg_url: pg.url, pg_dir: pg.dir };
  const servers = [
    { name: 'pg', env: [`PARLEY_DB_URL=${pg.url}`], pg: true },
    { name: 'pg-batch1', env: [`PARLEY_DB_URL=${pg.url}`, 'PARLEY_BATCH_MAX=1'], pg: true },
    { name: 'sqlite', env: [] },
    { name: 'sqlite-batch1', env: ['PARLEY_BATCH_MAX=1'] },
  ];
  for (let r = 0; r < reps && Date.now() < deadline; r++) {
    const rot = servers.map((_, i) => servers[(i + r) % servers.length]);
    for (const sv of rot) {
      if (Date.now() > deadline) break;
      const mport = PORT + 702;
      const args = [...WRITES_ARGS, '--server', PARLEYD, '--name', sv.name, ...EXTRA_ENV, ...sv.env.flatMap((e) => ['--env', e]), '--env', `PARLEY_METRICS_LISTEN=127.0.0.1:${mport}`, ...(sv.pg ? ['--cpu-tree', String(pg.pid)] : [])];
      const hooks = (s) => ({
        warmup: async () => { s.metrics0 = await metrics(mport); if (sv.pg) { resetStatements(pg.pgdir); s.lsn0 = lsn(pg.pgdir); s.wal_io0 = walIo(pg.pgdir); } },
        done: async () => { s.metrics1 = await metrics(mport); if (sv.pg) { s.lsn1 = lsn(pg.pgdir); s.statements = statements(pg.pgdir); s.wal_io1 = walIo(pg.pgdir); } },
      });
      const c = await cell(`writes round ${r + 1}/${reps} ${sv.name}`, args, hooks);
      if (c.snaps.lsn0 && c.snaps.lsn1) c.wal = walStats(pg.pgdir, c.snaps.lsn0, c.snaps.lsn1);
      if (c.snaps.wal_io0) c.wal_io = delta(c.snaps.wal_io0, c.snaps.wal_io1);
      if (c.snaps.metrics0?.tx_count >= 0 && c.snaps.metrics1?.tx_count >= 0) c.writer = delta(c.snaps.metrics0, c.snaps.metrics1);
      runs.push({ group: 'writes', round: r + 1, scenario: 'writes', config: sv.name, ...c, cmd: c.cmd.replace(PARLEYD, PARLEYD_SRC) });
    }
  }
}

if (groups.includes('cost') && Date.now() < deadline) {
  let cls = null;
  try {
    cls = [clusterUp('c3', PORT, 3), clusterUp('c1', PORT + 400, 1)];
  } catch (e) {
    log(`a cluster did not start: ${String(e.stderr || e.message).trim().slice(-400)}; the cost group is skipped`);
    setup.cost_error = String(e.stderr || e.message).slice(-1000);
  }
  if (cls) {
  setup.cost = Object.fromEntries(cls.map((c) => [c.name, { cmd: c.cmd, dir: c.dir, port: c.port, pids: c.pids, env: c.env }]));
  const configs = [...cls.map((c) => ({ name: c.name, cl: c })), { name: 'sqlite' }];
  for (let r = 0; r < reps && Date.now() < deadline; r++) {
    for (const sc of COST_SCENARIOS) {
      const rot = configs.map((_, i) => configs[(i + r) % configs.length]);
      if (sc.once && r > 0) continue;
      for (const cf of rot) {
        if (Date.now() > deadline) break;
        const cl = cf.cl;
        if (cl && sc.id === 'conns') restartNodes(cl);
        const spid = cl ? (sc.id === 'conns' ? cl.pids.find((p) => p.role === 'haproxy') : cl.pids[0]).pid : null;
        const target = cl
          ? ['--url', `http://127.0.0.1:${cl.port}`, '--server-pid', String(spid), '--name', cf.name,
            ...cl.pids.flatMap((p) => [p.tree ? '--cpu-tree' : '--cpu-pid', String(p.pid)])]
          : ['--server', PARLEYD, '--name', cf.name, '--env', 'PARLEY_WORKERS=2', ...EXTRA_ENV];
        const args = [...sc.args, ...target];
        // the deployment's processes; for sqlite the server parley-load starts (found by its port)
        const procs = () => (cl ? cl.pids : []);
        const conns = sc.id === 'conns' ? (s) => ({
          // during the settle after the warm-up sockets closed: the idle baseline
          'opened#1': async () => { await sleep(2000); s.idle0 = procSnap(procs()); await sleep((SETTLE - 5) * 1000); s.idle1 = procSnap(procs()); },
          // with every connection open: memory, then idle CPU over the rest of the settle
          'opened#2': async () => { await sleep(3000); s.open0 = procSnap(procs()); s.conns = cl ? connsPerNode(cl) : null; await sleep((SETTLE - 6) * 1000); s.open1 = procSnap(procs()); },
        }) : null;
        const hooks = conns || (cl ? (s) => ({
          warmup: () => { resetStatements(cl.pgdir); resetStatements(cl.replicadir); s.lsn0 = lsn(cl.pgdir); s.redis0 = redisStats(cl.redisPort); },
          measure: () => { s.conns = connsPerNode(cl); },
          done: () => { s.lsn1 = lsn(cl.pgdir); s.redis1 = redisStats(cl.redisPort); s.statements = statements(cl.pgdir); s.replica_statements = statements(cl.replicadir); },
        }) : null);
        const c = await cell(`cost round ${r + 1}/${reps} ${sc.id} ${cf.name}`, args, hooks);
        if (c.snaps.lsn0 && c.snaps.lsn1) c.wal = walStats(cl.pgdir, c.snaps.lsn0, c.snaps.lsn1);
        if (c.snaps.redis0) c.redis = delta(c.snaps.redis0, c.snaps.redis1);
        runs.push({ group: 'cost', round: r + 1, scenario: sc.id, config: cf.name, ...c, cmd: c.cmd.replace(PARLEYD, PARLEYD_SRC), pids: cl ? cl.pids.map((p) => ({ ...p })) : null });
      }
    }
  }
  }
}
if (Date.now() > deadline) log(`the time budget (--budget-min ${opt['budget-min']}) ran out: the remaining cells were skipped`);

// ---------------------------------------------------------------- figures

const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fmt = (x) => (x === null || x === undefined ? '-' : Math.abs(x) >= 100 ? String(Math.round(x)) : String(Math.round(x * 100) / 100));
const rt = (a, b) => (a == null || b == null || !b ? null : a / b);
const fx = (x) => (x == null ? '-' : `${x.toFixed(2)}x`);

// Derived per cell: CPU by role over the measured interval, per message and per delivery.
function derive(c) {
  const r = c.result;
  if (!r || r.deliveries_measured == null) return null;
  const msgs = r.acks_measured, dl = r.deliveries_measured;
  const all = (r.cpu?.server_cpu_s ?? 0) + (r.cpu?.cpu_pids_s ?? 0);
  const d = { all_cpu_s: all, all_us_per_delivery: dl ? (all * 1e6) / dl : null, all_us_per_msg: msgs ? (all * 1e6) / msgs : null, cores: all / r.cpu.wall_s, msgs, deliveries: dl, deliveries_per_msg: msgs ? dl / msgs : null };
  const roles = {};
  if (c.pids && r.cpu_pids) {
    for (const p of r.cpu_pids) {
      const role = c.pids.find((x) => x.pid === p.pid)?.role || 'other';
      roles[role] = (roles[role] || 0) + Math.max(0, p.cpu_s);
    }
  } else if (c.config?.startsWith('pg') && r.cpu_pids) {
    roles.node = r.cpu.server_cpu_s;
    roles['pg-primary'] = r.cpu_pids.reduce((a, p) => a + Math.max(0, p.cpu_s), 0);
  } else roles.node = r.cpu?.server_cpu_s ?? 0;
  d.cpu_by_role_s = roles;
  d.us_per_msg_by_role = Object.fromEntries(Object.entries(roles).map(([k, v]) => [k, msgs ? (v * 1e6) / msgs : null]));
  d.us_per_delivery_by_role = Object.fromEntries(Object.entries(roles).map(([k, v]) => [k, dl ? (v * 1e6) / dl : null]));
  if (c.wal?.commits != null && r.sent) {
    d.commits_per_msg = c.wal.commits / r.sent;
    d.wal_bytes_per_msg = c.wal.bytes / r.sent;
    if (roles['pg-primary'] != null && d.commits_per_msg) d.pg_us_per_commit = (roles['pg-primary'] * 1e6) / (msgs * d.commits_per_msg);
    d.msgs_per_commit = 1 / d.commits_per_msg;
  }
  if (c.writer?.tx_count > 0) {
    d.writer_tx_ms = (c.writer.tx_seconds * 1000) / c.writer.tx_count;
    d.writer_jobs_per_tx = c.writer.batch_jobs / c.writer.batches;
  }
  if (c.wal_io?.wal_sync > 0) d.fsync_ms = c.wal_io.wal_sync_ms / c.wal_io.wal_sync;
  if (c.redis?.publish != null && r.sent) {
    d.publish_per_msg = c.redis.publish / r.sent;
    if (roles.redis != null) d.redis_us_per_msg = (roles.redis * 1e6) / msgs;
  }
  return d;
}
// Idle connections: memory per connection by process (and the kernel's TCP buffers), and the
// idle CPU the connections add (heartbeats), in cores per 10,000 connections.
function deriveConns(c) {
  const r = c.result, s = c.snaps;
  if (!r || !s) return null;
  const n = r.conns_open || r.conns;
  const d = { conns: n, kib_per_conn: {}, idle_cores_per_10k: null };
  if (s.open0 && s.idle1) {
    const roles = {};
    for (const [name, x] of Object.entries(s.open0.by)) {
      const b = s.idle1.by[name];
      if (x.rss_kib == null || b?.rss_kib == null) continue;
      roles[x.role] = (roles[x.role] || 0) + (x.rss_kib - b.rss_kib);
    }
    for (const [k, v] of Object.entries(roles)) d.kib_per_conn[k] = v / n;
    if (s.open0.tcp_mem_kib != null && s.idle1.tcp_mem_kib != null) d.kib_per_conn.kernel_tcp = (s.open0.tcp_mem_kib - s.idle1.tcp_mem_kib) / n;
    if (s.open0.sock_slab_kib != null && s.idle1.sock_slab_kib != null) d.kib_per_conn.kernel_slab = (s.open0.sock_slab_kib - s.idle1.sock_slab_kib) / n;
  }
  if (d.kib_per_conn.node == null && r.kib_per_conn != null) d.kib_per_conn.node = r.kib_per_conn;
  const sum = (x) => Object.values(x.by).reduce((t, y) => t + y.cpu_s, 0);
  const cores = (a, b) => (sum(b) - sum(a)) / ((b.t - a.t) / 1000);
  if (s.open0 && s.open1 && s.idle0 && s.idle1 && Object.keys(s.open0.by).length) {
    d.idle_cores_base = cores(s.idle0, s.idle1);
    d.idle_cores_open = cores(s.open0, s.open1);
    d.idle_cores_per_10k = ((d.idle_cores_open - d.idle_cores_base) / n) * 10000;
  }
  return d;
}
for (const c of runs) c.derived = c.scenario === 'conns' ? deriveConns(c) : derive(c);

const lines = [];
const W = (s = '') => lines.push(s);
W(`Parley cluster benchmark, ${started.toISOString()}: ${os.cpus().length} cores (${os.cpus()[0]?.model}), Linux ${os.release()}; median of ${reps} round(s); client and every server process share the machine.`);
W();
W(`parleyd: ${PARLEYD_SRC} (checkout ${gitRev}); parley-load: ${LOAD_SRC}. Everything on 127.0.0.1 under ${DIR}.${opt.env.length ? ` Every parleyd with ${opt.env.join(' ')}.` : ''}`);
const val = (grp, sc, cf, get) => median(runs.filter((x) => x.group === grp && x.scenario === sc && x.config === cf && x.result).map((x) => { try { return get(x); } catch { return null; } }));
const perRound = (grp, sc, cf, get) => runs.filter((x) => x.group === grp && x.scenario === sc && x.config === cf).map((x) => (x.result ? fmt(get(x)) : 'FAILED') + (x.code !== 0 ? '*' : ''));
const summary = { writes: null, cost: {} };

if (groups.includes('writes') && runs.some((x) => x.group === 'writes')) {
  const cfgs = ['pg', 'pg-batch1', 'sqlite', 'sqlite-batch1'];
  const M = [
    ['acked msg/s', (x) => x.result.acks_per_s],
    ['ack p50 ms', (x) => x.result.ack_latency_ms?.p50],
    ['ack p99 ms', (x) => x.result.ack_latency_ms?.p99],
    ['parleyd CPU us/msg', (x) => x.result.server_cpu_us_per_ack],
    ['parleyd+PostgreSQL CPU us/msg', (x) => x.derived.all_us_per_msg],
    ['PostgreSQL CPU us/msg', (x) => x.derived.us_per_msg_by_role['pg-primary']],
    ['msgs per write transaction', (x) => x.derived.msgs_per_commit],
    ['PostgreSQL CPU us per transaction', (x) => x.derived.pg_us_per_commit],
    ['WAL bytes/msg', (x) => x.derived.wal_bytes_per_msg],
    ['writer transaction ms (begin to commit)', (x) => x.derived.writer_tx_ms],
    ['writer jobs per transaction', (x) => x.derived.writer_jobs_per_tx],
    ['WAL fsync ms (pg_stat_wal)', (x) => x.derived.fsync_ms],
  ];
  W();
  W(`### Writes: batched against one insert per transaction (\`parley-load ${WRITES_ARGS.join(' ')}\`)`);
  W();
  W(`| metric | ${cfgs.join(' | ')} | pg/pg-batch1 | sqlite/sqlite-batch1 | pg/sqlite |`);
  W(`|---|${cfgs.map(() => '---:').join('|')}|---:|---:|---:|`);
  for (const [name, get] of M) {
    const v = Object.fromEntries(cfgs.map((c) => [c, val('writes', 'writes', c, get)]));
    W(`| ${name} | ${cfgs.map((c) => fmt(v[c])).join(' | ')} | ${fx(rt(v.pg, v['pg-batch1']))} | ${fx(rt(v.sqlite, v['sqlite-batch1']))} | ${fx(rt(v.pg, v.sqlite))} |`);
  }
  const a = val('writes', 'writes', 'pg', M[0][1]), b = val('writes', 'writes', 'pg-batch1', M[0][1]);
  const pr = runs.filter((x) => x.group === 'writes' && x.config === 'pg').map((x) => x.round).map((rd) => {
    const p = runs.find((x) => x.group === 'writes' && x.config === 'pg' && x.round === rd)?.result?.acks_per_s;
    const q = runs.find((x) => x.group === 'writes' && x.config === 'pg-batch1' && x.round === rd)?.result?.acks_per_s;
    return fx(rt(p, q));
  });
  summary.writes = { pg_acks_per_s: a, pg_batch1_acks_per_s: b, ratio: rt(a, b), per_round: pr, target: '>= 10x', met: rt(a, b) != null && rt(a, b) >= 10 };
  W();
  W(`pg / pg-batch1 per round: ${pr.join(', ')}. **Target >= 10x: ${summary.writes.met ? 'met' : 'NOT met'}** (${fx(summary.writes.ratio)}).`);
  W();
  W('Per round, acked msg/s (other processes\' cores in brackets):');
  W();
  for (const c of cfgs) W(`- ${c}: ${runs.filter((x) => x.group === 'writes' && x.config === c).map((x) => `${x.result ? fmt(x.result.acks_per_s) : 'FAILED'}${x.code ? '*' : ''} (${x.other_cores ?? '-'})`).join(', ')}`);
}

if (groups.includes('cost') && runs.some((x) => x.group === 'cost')) {
  const cfgs = ['c3', 'c1', 'sqlite'];
  const M = [
    ['all CPU us/delivery', (x) => x.derived.all_us_per_delivery],
    ['all CPU us/msg', (x) => x.derived.all_us_per_msg],
    ['cores (all processes)', (x) => x.derived.cores],
    ['deliveries/s', (x) => x.result.deliveries_per_s],
    ['e2e p50 ms', (x) => x.result.latency_ms?.p50],
    ['e2e p99 ms', (x) => x.result.latency_ms?.p99],
    ['nodes us/delivery', (x) => x.derived.us_per_delivery_by_role.node],
    ['nodes us/msg', (x) => x.derived.us_per_msg_by_role.node],
    ['Redis us/msg', (x) => x.derived.us_per_msg_by_role.redis],
    ['HAProxy us/delivery', (x) => x.derived.us_per_delivery_by_role.haproxy],
    ['PG primary us/msg', (x) => x.derived.us_per_msg_by_role['pg-primary']],
    ['PG replica us/msg', (x) => x.derived.us_per_msg_by_role['pg-replica']],
    ['msgs per write transaction', (x) => x.derived.msgs_per_commit],
    ['PG primary us per transaction', (x) => x.derived.pg_us_per_commit],
    ['PUBLISH per msg', (x) => x.derived.publish_per_msg],
  ];
  for (const sc of COST_SCENARIOS.filter((x) => x.id !== 'conns')) {
    W();
    W(`### Cost: \`${sc.args.join(' ')}\``);
    W();
    W(`| metric | ${cfgs.join(' | ')} | c3/c1 | c3/sqlite | c1/sqlite |`);
    W(`|---|${cfgs.map(() => '---:').join('|')}|---:|---:|---:|`);
    for (const [name, get] of M) {
      const v = Object.fromEntries(cfgs.map((c) => [c, val('cost', sc.id, c, get)]));
      W(`| ${name} | ${cfgs.map((c) => fmt(v[c])).join(' | ')} | ${fx(rt(v.c3, v.c1))} | ${fx(rt(v.c3, v.sqlite))} | ${fx(rt(v.c1, v.sqlite))} |`);
    }
    const get = M[0][1];
    const a = val('cost', sc.id, 'c3', get), b = val('cost', sc.id, 'c1', get), s = val('cost', sc.id, 'sqlite', get);
    const rounds = [...new Set(runs.filter((x) => x.group === 'cost' && x.scenario === sc.id).map((x) => x.round))];
    const pr = rounds.map((rd) => {
      const g = (cf) => { const x = runs.find((y) => y.group === 'cost' && y.scenario === sc.id && y.config === cf && y.round === rd); return x?.derived ? get(x) : null; };
      return fx(rt(g('c3'), g('c1')));
    });
    summary.cost[sc.id] = { c3_us_per_delivery: a, c1_us_per_delivery: b, sqlite_us_per_delivery: s, c3_over_c1: rt(a, b), c3_over_sqlite: rt(a, s), per_round_c3_over_c1: pr, target: '<= 1.5x', met: rt(a, b) != null && rt(a, b) <= 1.5 };
    W();
    W(`c3/c1 per round: ${pr.join(', ')}. **Target <= 1.5x: ${summary.cost[sc.id].met ? 'met' : 'NOT met'}** (${fx(summary.cost[sc.id].c3_over_c1)}).`);
    W();
    W('Per round, all CPU us/delivery (other processes\' cores; connections per node):');
    W();
    for (const c of cfgs) W(`- ${c}: ${runs.filter((x) => x.group === 'cost' && x.scenario === sc.id && x.config === c).map((x) => `${x.derived ? fmt(get(x)) : 'FAILED'}${x.code ? '*' : ''} (${x.other_cores ?? '-'}${x.snaps?.conns ? `; ${Object.values(x.snaps.conns).join('/')}` : ''})`).join(', ')}`);
  }
}
if (runs.some((x) => x.group === 'cost' && x.scenario === 'conns')) {
  const cfgs = ['c3', 'c1', 'sqlite'];
  const sc = COST_SCENARIOS.find((x) => x.id === 'conns');
  const M = [
    ['nodes KiB/conn (RSS)', (x) => x.derived.kib_per_conn.node],
    ['HAProxy KiB/conn (RSS)', (x) => x.derived.kib_per_conn.haproxy],
    ['kernel socket objects KiB/conn (slabinfo; 4 sockets via HAProxy, 2 direct)', (x) => x.derived.kib_per_conn.kernel_slab],
    ['idle cores per 10k conns', (x) => x.derived.idle_cores_per_10k],
  ];
  W();
  W(`### Cost: \`${sc.args.join(' ')}\` (idle connections, round 1 only)`);
  W();
  W(`| metric | ${cfgs.join(' | ')} | c3/c1 |`);
  W(`|---|${cfgs.map(() => '---:').join('|')}|---:|`);
  for (const [name, get] of M) {
    const v = Object.fromEntries(cfgs.map((c) => [c, val('cost', 'conns', c, (x) => (x.derived ? get(x) : null))]));
    W(`| ${name} | ${cfgs.map((c) => fmt(v[c])).join(' | ')} | ${fx(rt(v.c3, v.c1))} |`);
  }
  summary.cost.conns = Object.fromEntries(cfgs.map((c) => [c, runs.find((x) => x.group === 'cost' && x.scenario === 'conns' && x.config === c)?.derived ?? null]));
}
const bad = runs.filter((x) => x.code !== 0);
if (bad.length) {
  W();
  W('Problems:');
  for (const b of bad) W(`- ${b.group} round ${b.round} ${b.scenario} ${b.config}: exit ${b.code}; ${b.result ? JSON.stringify(b.result.problems).slice(0, 600) : b.stderr.slice(-600)}`);
}
W();
W('Commands (one per cell kind; every cell is in the JSON):');
W();
for (const k of [...new Set(runs.map((x) => `${x.scenario} ${x.config}`))]) W(`- ${k}: \`${runs.find((x) => `${x.scenario} ${x.config}` === k).cmd}\``);
if (setup.cost) for (const [n, c] of Object.entries(setup.cost)) W(`- ${n}: \`${c.cmd}\` (with the environment of bench/cluster.mjs NODE_ENV)`);
console.log(lines.join('\n'));

const out = opt.out || path.join(os.tmpdir(), `parley-bench-cluster-${started.toISOString().replace(/[:.]/g, '-')}.json`);
mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
writeFileSync(out, JSON.stringify({ started: started.toISOString(), finished: new Date().toISOString(), reps, quick: Q, groups, parleyd: { path: PARLEYD_SRC, checkout: gitRev }, node_env: NODE_ENV, setup, summary, runs }, null, 1));
writeFileSync(out.replace(/\.json$/, '') + '.md', lines.join('\n') + '\n');
log(`results in ${out} (the tables also in ${out.replace(/\.json$/, '')}.md)`);
process.exit(bad.some((b) => !b.result) ? 1 : 0);
