#!/usr/bin/env node
// parley-bench: a load generator for any server that speaks the Parley client protocol v1
// (/work/shared/PROTOCOL.md): parleyd and the two reference servers (node-ref, uws-ref).
//
// It starts the server itself (a free 127.0.0.1 port, a temporary data directory, the extra
// environment given with --env), signs users up over HTTP, creates conversations, opens
// authenticated WebSockets and runs ONE bounded scenario: every scenario stops after a fixed
// number of messages or after --max-seconds, whichever comes first. All traffic is on 127.0.0.1.
//
//   node bench/parley-bench.mjs send-throughput [--mode group|direct] [--senders 50] [--window 32] [--messages 20000]
//   node bench/parley-bench.mjs fanout [--members 100] [--senders 4] [--window 8] [--messages 1000]
//   node bench/parley-bench.mjs idle-memory [--conns 2000] [--users 100]
//   node bench/parley-bench.mjs signup-storm [--clients 4] [--users 200]
//       (a check: C keep-alive HTTP clients sign users up back to back; with C no larger than
//       PARLEY_MAX_HASHES, the default 4, no signup should be refused with 503)
//   node bench/parley-bench.mjs shutdown-under-load [--mode group|direct] [--after-ms 2000]
//       (a check, not a measurement: SIGTERM in the middle of a send-throughput load, then
//       the close codes the clients saw, and a restart that must hold every acked message)
//
// Common options: --server PATH (default $PARLEYD, else build/release/parleyd), --name LABEL,
// --env KEY=VALUE (repeatable), --url http://127.0.0.1:PORT [--pid PID] (use a running server),
// --json (print one JSON result line on stdout; the human summary goes to stderr),
// --max-seconds N, --body-bytes N, --warmup N.
//
// The process exits 0 when the scenario ran to its end and every check held, 1 when a check
// failed or the run hit its time bound (a finding, see the JSON "problems"), 2 on a crash of the
// server or of the setup. Nothing here asserts on timing; times are only reported.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import httpMod from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { freePort } from '../tests/lib/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');

// ws: bench/node_modules if someone installed it there, else the copy `make build`
// (scripts/setup) installs into tests/node_modules.
function loadWs() {
  for (const base of [path.join(here, 'package.json'), path.join(root, 'tests', 'package.json')]) {
    try {
      return createRequire(base)('ws');
    } catch { /* next */ }
  }
  console.error('parley-bench: the `ws` package is missing: run `npm ci` in bench/ (bench/run.sh does it)');
  process.exit(2);
}
const WebSocket = loadWs();

// ------------------------------------------------------------------------------------ options

const SCENARIOS = ['send-throughput', 'fanout', 'idle-memory', 'shutdown-under-load', 'signup-storm'];

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    server: { type: 'string' },
    name: { type: 'string' },
    env: { type: 'string', multiple: true, default: [] },
    url: { type: 'string' },
    pid: { type: 'string' },
    json: { type: 'boolean', default: false },
    'max-seconds': { type: 'string' },
    'body-bytes': { type: 'string', default: '64' },
    warmup: { type: 'string' },
    mode: { type: 'string', default: 'group' },
    senders: { type: 'string' },
    window: { type: 'string' },
    messages: { type: 'string' },
    members: { type: 'string', default: '100' },
    conns: { type: 'string', default: '2000' },
    users: { type: 'string', default: '100' },
    settle: { type: 'string', default: '2' },
    'after-ms': { type: 'string', default: '2000' },
    clients: { type: 'string', default: '4' },
    'keep-data': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (opt.help || positionals.length !== 1 || !SCENARIOS.includes(positionals[0])) {
  const text = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n');
  const end = text.findIndex((l) => l.startsWith('import '));
  console.error(text.slice(1, end).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(opt.help ? 0 : 2);
}
const scenario = positionals[0];

function int(name, dflt) {
  const v = opt[name] ?? dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`parley-bench: --${name} expects a non-negative integer, got '${v}'`);
    process.exit(2);
  }
  return n;
}

const extraEnv = {};
for (const kv of opt.env) {
  const i = kv.indexOf('=');
  if (i <= 0) {
    console.error(`parley-bench: --env expects KEY=VALUE, got '${kv}'`);
    process.exit(2);
  }
  extraEnv[kv.slice(0, i)] = kv.slice(i + 1);
}

const serverBin = path.resolve(opt.server || process.env.PARLEYD || path.join(root, 'build/release/parleyd'));
const label = opt.name || path.basename(serverBin);
const BODY_BYTES = int('body-bytes');
const log = (...a) => console.error(`[${label}] ${scenario}:`, ...a);

// ------------------------------------------------------------------------------------ utils

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

function pct(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}
function summary(arr) {
  const s = Float64Array.from(arr).sort();
  const r = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
  return { n: s.length, p50: r(pct(s, 50)), p90: r(pct(s, 90)), p99: r(pct(s, 99)), max: r(s.length ? s[s.length - 1] : null) };
}

function softNofile() {
  try {
    return Number(execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim()) || Infinity;
  } catch {
    return Infinity;
  }
}
function procNofile(pid) {
  try {
    const m = /Max open files\s+(\d+|unlimited)/.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
  } catch {
    return Infinity;
  }
}
function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : null;
}
const TICK = (() => {
  try { return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100; } catch { return 100; }
})();
// CPU seconds (user + system, all threads) the server process has used so far.
function cpuSeconds(pid) {
  if (!pid) return null;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / TICK;
  } catch {
    return null;
  }
}
function fdCount(pid) {
  try { return readdirSync(`/proc/${pid}/fd`).length; } catch { return null; }
}
// Busy CPU seconds of the whole machine (all processes): to tell how much of a run's CPU
// went to neither the server nor this client (other work on a shared machine).
function machineBusySeconds() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0)) / TICK;
  } catch {
    return null;
  }
}
// CPU accounting of a measured phase: the server's, this client's and everybody else's.
function cpuSnap(srv) {
  return { server: cpuSeconds(srv.pid), client: process.cpuUsage(), machine: machineBusySeconds(), t: now() };
}
function cpuDelta(a, srv) {
  const b = cpuSnap(srv);
  const r2 = (x) => (x === null || Number.isNaN(x) ? null : Math.round(x * 100) / 100);
  const server = a.server !== null && b.server !== null ? b.server - a.server : null;
  const cu = process.cpuUsage(a.client);
  const client = (cu.user + cu.system) / 1e6;
  const machine = a.machine !== null && b.machine !== null ? b.machine - a.machine : null;
  return {
    wall_s: r2((b.t - a.t) / 1000),
    server_cpu_s: r2(server),
    client_cpu_s: r2(client),
    // busy CPU of processes other than the server and this client (a shared machine)
    other_cpu_s: machine !== null && server !== null ? r2(Math.max(0, machine - server - client)) : null,
  };
}
function threads(pid) {
  try { return Number(/Threads:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]); } catch { return null; }
}


// ------------------------------------------------------------------------------------ server

// A server child: {url, wsUrl, pid, stderrTail(), exited (promise), alive(), stop()}.
// reuse: {port, dataDir} of a stopped server, to start it again on the same data.
async function startServer(reuse = null) {
  if (opt.url) {
    const u = new URL(opt.url);
    return {
      url: u.origin, wsUrl: `ws://${u.host}/ws`, pid: opt.pid ? Number(opt.pid) : null, external: true,
      stderrTail: () => '', alive: () => true, exitInfo: null, stop: async () => null,
    };
  }
  if (!existsSync(serverBin)) throw new Error(`server binary not found: ${serverBin} (run make build)`);
  const port = reuse ? reuse.port : await freePort();
  const dataDir = reuse ? reuse.dataDir : mkdtempSync(path.join(os.tmpdir(), 'parley-bench-'));
  const env = {
    ...process.env,
    PARLEY_LISTEN: `127.0.0.1:${port}`,
    PARLEY_DATA: dataDir,
    PARLEY_JWT_SECRET: 'bench-secret-0123456789abcdef0123456789abcdef',
    PARLEY_SEND_RATE: '0',
    PARLEY_SEND_BURST: '0',
    // one address, flooding on purpose: the abuse limits off (docs/SECURITY.md)
    PARLEY_CONNS_PER_ADDR: '0',
    PARLEY_SIGNUPS_PER_MIN: '0',
    PARLEY_CONVS_PER_MIN: '0',
    PARLEY_LOGIN_FAILS: '0',
    PARLEY_READ_RATE: '0',
    PARLEY_TYPING_MS: '0',
    PARLEY_WRITER_QUEUE: '100000000',
    PARLEY_LOG_LEVEL: 'warn',
    ...extraEnv,
  };
  const child = spawn(serverBin, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let tail = '';
  const keep = (d) => { tail = (tail + d).slice(-16384); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exitInfo = null;
  const exited = new Promise((resolve) => child.once('exit', (code, sig) => { exitInfo = { code, sig }; resolve(exitInfo); }));
  let stopping = false;
  const srv = {
    url: `http://127.0.0.1:${port}`, wsUrl: `ws://127.0.0.1:${port}/ws`, pid: child.pid, dataDir, port, child,
    stderrTail: () => tail,
    alive: () => exitInfo === null,
    get exitInfo() { return exitInfo; },
    get stopping() { return stopping; },
    exited,
    // SIGTERM, then SIGKILL after 15 s. Returns {code, sig, killed, seconds}.
    async stop({ keepData = false } = {}) {
      stopping = true;
      const t0 = now();
      let killed = false;
      if (exitInfo === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => { killed = true; child.kill('SIGKILL'); }, 15000);
        await exited;
        clearTimeout(t);
      }
      if (!opt['keep-data'] && !keepData) rmSync(dataDir, { recursive: true, force: true });
      return { ...exitInfo, killed, seconds: Math.round(now() - t0) / 1000 };
    },
  };
  // The wrappers of the baselines may run `npm install` on their first start: allow 5 minutes.
  const until = Date.now() + 300000;
  for (;;) {
    if (exitInfo !== null) throw Object.assign(new Error(`server exited during start: ${JSON.stringify(exitInfo)}`), { srv });
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > until) throw Object.assign(new Error(`server did not listen on ${port} in 300 s`), { srv });
    await sleep(50);
  }
  return srv;
}

// ------------------------------------------------------------------------------------ HTTP

const setupRetries = {}; // HTTP answers 503/429 retried during setup, by status (a diagnostic)
async function http(srv, method, p, { token, body } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const t0 = now();
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(srv.url + p, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(30000),
    });
    const text = await res.text();
    // 503 "too many logins at once" / 429: the server asks us to come back; do, for at most
    // 2 minutes. The backoff stays short: parleyd's hash cap is per I/O worker and a keep-alive
    // connection stays on its worker, so a patient client can starve (docs/BENCHMARKS.md).
    if ((res.status === 503 || res.status === 429) && now() - t0 < 120000) {
      setupRetries[res.status] = (setupRetries[res.status] || 0) + 1;
      await sleep(Math.min(100, 10 * 2 ** Math.min(attempt, 4)));
      continue;
    }
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (res.status >= 300) throw new Error(`${method} ${p} -> ${res.status} ${text.slice(0, 300)}`);
    return json;
  }
}

// Signs up n users, `concurrency` at a time (password hashing is deliberately slow).
// The conversation each sender writes to: one group of all senders, or a
// direct conversation per sender with a partner of its own (users[M + i]).
async function sendersConversations(srv, mode, users, senders, M) {
  const convOf = [];
  if (mode === 'group') {
    const c = await http(srv, 'POST', '/api/conversations', {
      token: senders[0].token, body: { kind: 'group', title: 'bench', members: senders.slice(1).map((u) => u.id) },
    });
    for (let i = 0; i < M; i++) convOf.push(c.id);
  } else {
    for (let i = 0; i < M; i++) {
      const c = await http(srv, 'POST', '/api/conversations', { token: senders[i].token, body: { kind: 'direct', user_id: users[M + i].id } });
      convOf.push(c.id);
    }
  }
  return convOf;
}

async function signupUsers(srv, n, concurrency = 4) {
  const tag = Math.random().toString(36).slice(2, 8);
  const users = new Array(n);
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      const r = await http(srv, 'POST', '/api/auth/signup', { body: { username: `b${tag}_${i}`, password: 'bench-password-1' } });
      users[i] = { id: r.user.id, token: r.access_token, name: r.user.username };
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return users;
}

// ------------------------------------------------------------------------------------ sockets

const problems = [];
const framesByOp = {}; // every frame received after hello, by op (a diagnostic)
const closeCodes = {}; // every close of a socket that had its hello, by code
let expectServerClose = false; // set while a scenario stops the server under load on purpose
function problem(kind, detail) {
  if (problems.length < 200) problems.push({ kind, detail });
}

// Opens an authenticated socket; resolves {ws, hello} after the server's hello.
// onFrame(obj, ws) gets every later frame.
function openSocket(srv, token, onFrame, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(srv.wsUrl, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    let ready = false;
    const t = setTimeout(() => { ws.terminate(); reject(new Error('no hello within 30 s')); }, timeoutMs);
    ws.on('message', (data) => {
      let o;
      try { o = JSON.parse(data.toString()); } catch { problem('bad_json_frame', String(data).slice(0, 200)); return; }
      if (!ready) {
        if (o.op === 'hello') { ready = true; clearTimeout(t); resolve(ws); return; }
        if (o.op !== 'presence') problem('frame_before_hello', o);
        return;
      }
      framesByOp[o.op] = (framesByOp[o.op] || 0) + 1;
      onFrame(o, ws);
    });
    ws.on('error', (e) => { if (!ready) { clearTimeout(t); reject(e); } else problem('socket_error', e.message); });
    ws.on('close', (code, reason) => {
      closeCodes[code] = (closeCodes[code] || 0) + 1;
      if (!ready) { clearTimeout(t); reject(new Error(`closed before hello: ${code} ${reason}`)); return; }
      if (!ws.benchClosing && !srv.stopping && !expectServerClose) problem('unexpected_close', { code, reason: String(reason) });
    });
  });
}

async function openMany(srv, tokens, onFrameFor, concurrency = 50) {
  const out = new Array(tokens.length);
  let next = 0;
  async function worker() {
    while (next < tokens.length) {
      const i = next++;
      out[i] = await openSocket(srv, tokens[i], onFrameFor(i));
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, tokens.length) }, worker));
  return out;
}

function closeAll(sockets) {
  for (const ws of sockets) {
    if (!ws) continue;
    ws.benchClosing = true;
    try { ws.close(1000); } catch { /* already closed */ }
  }
}

function pad(body) {
  return body.length >= BODY_BYTES ? body : body + ' ' + 'x'.repeat(Math.max(0, BODY_BYTES - body.length - 1));
}

// Waits until cond() or deadline; resolves true if cond() held.
async function until(cond, deadlineMs, srv) {
  while (!cond()) {
    if (now() > deadlineMs) return false;
    if (srv && !srv.alive()) return false;
    await sleep(5);
  }
  return true;
}

// Checks that the acked seqs of each conversation are exactly 1..n (dense, no duplicates).
function checkDense(seqsByConv) {
  for (const [conv, seqs] of seqsByConv) {
    const s = Uint32Array.from(seqs).sort();
    for (let i = 0; i < s.length; i++) {
      if (s[i] !== i + 1) {
        problem('acked_seqs_not_dense', { conv, at: i, expected: i + 1, got: s[i], count: s.length });
        break;
      }
    }
  }
}

// ------------------------------------------------------------------------------------ scenarios

// send-throughput: M senders, each keeps W unacked sends in flight until N are acked.
// group: one group of the M senders (every message is also delivered to all M sockets);
// direct: each sender in its own direct conversation with an offline peer (the only delivery
// is the sender's own msg echo).
async function sendThroughput(srv) {
  const mode = opt.mode;
  if (!['group', 'direct'].includes(mode)) throw new Error(`--mode must be group or direct, got ${mode}`);
  const M = int('senders', 50);
  const W = int('window', 32);
  const N = int('messages', 20000);
  const WARM = int('warmup', Math.min(1000, Math.floor(N / 10)));
  const maxMs = int('max-seconds', 60) * 1000;
  const params = { mode, senders: M, window: W, messages: N, warmup: WARM, body_bytes: BODY_BYTES, max_seconds: maxMs / 1000 };
  log(JSON.stringify(params));

  const users = await signupUsers(srv, mode === 'direct' ? 2 * M : M);
  const senders = users.slice(0, M);
  const convOf = await sendersConversations(srv, mode, users, senders, M);

  const run = Math.random().toString(36).slice(2, 8);
  const st = senders.map(() => ({ inflight: 0, sent: new Map(), lastSeq: new Map() }));
  const latency = [];
  const ackedSeqs = new Map();
  let issued = 0, acked = 0, failed = 0, delivered = 0, tMeasure = null, tLast = null, stopped = false;
  const errorCodes = {};
  let sockets = [];

  function pump(i) {
    const s = st[i];
    while (!stopped && s.inflight < W && issued < N) {
      const k = issued++;
      const id = `${run}-${i}-${k}`;
      s.inflight++;
      s.sent.set(id, { t0: now(), k });
      sockets[i].send(`{"op":"send","id":"${id}","conv":${convOf[i]},"body":"${pad(`m${k}`)}"}`);
    }
  }

  const onFrameFor = (i) => (o) => {
    const s = st[i];
    if (o.op === 'ack') {
      const e = s.sent.get(o.id);
      if (!e) { problem('unknown_ack', o); return; }
      s.sent.delete(o.id);
      s.inflight--;
      acked++;
      if (!Number.isSafeInteger(o.seq) || o.seq < 1) problem('bad_ack', o);
      else {
        let a = ackedSeqs.get(o.conv);
        if (!a) ackedSeqs.set(o.conv, (a = []));
        a.push(o.seq);
      }
      const t = now();
      if (acked === WARM) tMeasure = t;
      if (acked > WARM) latency.push(t - e.t0);
      tLast = t;
      pump(i);
    } else if (o.op === 'msg') {
      delivered++;
      const last = s.lastSeq.get(o.conv) || 0;
      if (o.seq <= last) problem('msg_out_of_order', { socket: i, conv: o.conv, last, got: o.seq });
      s.lastSeq.set(o.conv, o.seq);
    } else if (o.op === 'error') {
      errorCodes[o.code] = (errorCodes[o.code] || 0) + 1;
      const e = o.id && s.sent.get(o.id);
      if (e) { s.sent.delete(o.id); s.inflight--; failed++; pump(i); }
      problem('error_frame', o);
    }
  };

  sockets = await openMany(srv, senders.map((u) => u.token), onFrameFor);
  const cpu0 = cpuSnap(srv);
  const t0 = now();
  if (WARM === 0) tMeasure = t0;
  for (let i = 0; i < M; i++) pump(i);
  const done = await until(() => acked + failed >= N, t0 + maxMs, srv);
  stopped = true;
  const tEnd = now();
  const cpu = cpuDelta(cpu0, srv);
  if (!done) problem(srv.alive() ? 'time_bound_hit' : 'server_died', { acked, failed, issued, seconds: (tEnd - t0) / 1000 });

  // Every acked message reaches every member's socket: M per message (group) or 1 (direct echo).
  const expectDeliveries = mode === 'group' ? acked * M : acked;
  const allDelivered = await until(() => delivered >= expectDeliveries, now() + 10000, srv);
  if (!allDelivered) problem('missing_deliveries', { expected: expectDeliveries, got: delivered });
  checkDense(ackedSeqs);
  closeAll(sockets);

  const measured = acked - WARM;
  const secs = tMeasure !== null && tLast > tMeasure ? (tLast - tMeasure) / 1000 : null;
  return {
    params,
    acked, failed, delivered, error_codes: errorCodes,
    seconds_total: Math.round(tEnd - t0) / 1000,
    acked_per_s: secs && measured > 0 ? Math.round(measured / secs) : null,
    ack_latency_ms: summary(latency),
    cpu,
    // server CPU per acked message (includes delivering it to every member socket)
    server_cpu_us_per_msg: cpu.server_cpu_s !== null && acked > 0 ? Math.round((cpu.server_cpu_s * 1e6) / acked) : null,
  };
}

// fanout: one group of G members, all online; S of them send, each keeping W messages in flight
// (a message is in flight until EVERY member socket has received it, which bounds the queues).
// Measures delivered msg frames/s across all receivers and send-to-receive latency (the send
// time travels in the body; sender and receivers share this process's clock).
async function fanout(srv) {
  const G = int('members', 100);
  const S = int('senders', 4);
  const W = int('window', 8);
  const N = int('messages', 1000);
  const WARM = int('warmup', Math.min(100, Math.floor(N / 10)));
  const maxMs = int('max-seconds', 60) * 1000;
  if (S > G) throw new Error('--senders must not exceed --members');
  const params = { members: G, senders: S, window: W, messages: N, warmup: WARM, body_bytes: BODY_BYTES, max_seconds: maxMs / 1000 };
  log(JSON.stringify(params));

  const users = await signupUsers(srv, G);
  const conv = (await http(srv, 'POST', '/api/conversations', {
    token: users[0].token, body: { kind: 'group', title: 'fanout', members: users.slice(1).map((u) => u.id) },
  })).id;

  const run = Math.random().toString(36).slice(2, 8);
  const inflight = new Array(S).fill(0);
  const pending = new Map(); // client id -> {left, sender, k}
  const lastSeq = new Array(G).fill(0);
  const latency = [];
  const ackLatency = [];
  const ackedSeqs = new Map([[conv, []]]);
  const sentAt = new Map();
  const errorCodes = {};
  let issued = 0, acked = 0, complete = 0, failed = 0, delivered = 0, deliveredMeasured = 0;
  let tMeasure = null, tLast = null, stopped = false;
  let sockets = [];

  function pump(i) {
    while (!stopped && inflight[i] < W && issued < N) {
      const k = issued++;
      const id = `${run}-${i}-${k}`;
      inflight[i]++;
      pending.set(id, { left: G, sender: i, k });
      const t = now();
      sentAt.set(id, { t, k });
      if (k === WARM) tMeasure = t;
      // body: "<send time in ms> <k> <padding>"
      sockets[i].send(`{"op":"send","id":"${id}","conv":${conv},"body":"${pad(`${t.toFixed(3)} ${k}`)}"}`);
    }
  }
  function finish(id, p) {
    pending.delete(id);
    inflight[p.sender]--;
    complete++;
    pump(p.sender);
  }

  const onFrameFor = (r) => (o) => {
    if (o.op === 'msg') {
      const t = now();
      delivered++;
      if (o.seq <= lastSeq[r]) problem('msg_out_of_order', { socket: r, last: lastSeq[r], got: o.seq });
      lastSeq[r] = o.seq;
      const sp = o.body.indexOf(' ');
      const t0 = parseFloat(o.body.slice(0, sp));
      const k = parseInt(o.body.slice(sp + 1), 10);
      if (k >= WARM) { latency.push(t - t0); deliveredMeasured++; tLast = t; }
      const p = pending.get(o.id);
      if (p && --p.left === 0) finish(o.id, p);
    } else if (o.op === 'ack') {
      acked++;
      const e = sentAt.get(o.id);
      sentAt.delete(o.id);
      if (e && e.k >= WARM) ackLatency.push(now() - e.t);
      if (Number.isSafeInteger(o.seq)) ackedSeqs.get(conv).push(o.seq);
      else problem('bad_ack', o);
    } else if (o.op === 'error') {
      errorCodes[o.code] = (errorCodes[o.code] || 0) + 1;
      problem('error_frame', o);
      const p = o.id && pending.get(o.id);
      if (p) { failed++; finish(o.id, p); }
    }
  };

  sockets = await openMany(srv, users.map((u) => u.token), onFrameFor);
  await sleep(200); // let the presence burst of G logins drain before measuring
  const cpu0 = cpuSnap(srv);
  const t0 = now();
  for (let i = 0; i < S; i++) pump(i);
  const done = await until(() => complete >= N, t0 + maxMs, srv);
  stopped = true;
  const tEnd = now();
  const cpu = cpuDelta(cpu0, srv);
  if (!done) {
    problem(srv.alive() ? 'time_bound_hit' : 'server_died', { complete, acked, issued, delivered, expected: issued * G, seconds: (tEnd - t0) / 1000 });
  }
  checkDense(ackedSeqs);
  closeAll(sockets);

  const secs = tMeasure !== null && tLast > tMeasure ? (tLast - tMeasure) / 1000 : null;
  return {
    params,
    sent: issued, acked, failed, complete, delivered, error_codes: errorCodes,
    seconds_total: Math.round(tEnd - t0) / 1000,
    delivered_per_s: secs ? Math.round(deliveredMeasured / secs) : null,
    messages_per_s: secs ? Math.round(deliveredMeasured / G / secs) : null,
    e2e_latency_ms: summary(latency),
    ack_latency_ms: summary(ackLatency),
    cpu,
    // server CPU per delivered msg frame
    server_cpu_us_per_delivery: cpu.server_cpu_s !== null && delivered > 0 ? Math.round((cpu.server_cpu_s * 1e7) / delivered) / 10 : null,
  };
}

// idle-memory: K authenticated idle sockets spread over U users (no conversations, so no
// presence traffic); the server's VmRSS before and after, per connection.
async function idleMemory(srv) {
  let K = int('conns', 2000);
  const U = Math.max(1, Math.min(int('users', 100), K));
  const settleMs = int('settle', 2) * 1000;
  if (!srv.pid) throw new Error('idle-memory needs the server pid (--pid with --url)');
  const limit = Math.min(softNofile(), procNofile(srv.pid));
  if (K + 256 > limit) {
    const k2 = Math.max(1, limit - 256);
    log(`ulimit -n is ${limit}: lowering --conns from ${K} to ${k2}`);
    problem('conns_lowered_for_ulimit', { asked: K, used: k2, limit });
    K = k2;
  }
  const params = { conns: K, users: U, settle_s: settleMs / 1000, nofile_limit: limit === Infinity ? null : limit };
  log(JSON.stringify(params));

  const users = await signupUsers(srv, U);
  // One socket per user first and closed again, so that lazily built per-user and
  // per-code-path state (JIT, caches, thread stacks) is not counted per connection.
  closeAll(await openMany(srv, users.map((u) => u.token), () => () => {}));
  await sleep(settleMs);
  const before = rssKiB(srv.pid);
  const thr0 = threads(srv.pid);
  const fd0 = fdCount(srv.pid);
  const t0 = now();
  const tokens = Array.from({ length: K }, (_, i) => users[i % U].token);
  let frames = 0;
  const sockets = await openMany(srv, tokens, () => () => { frames++; });
  const openSecs = (now() - t0) / 1000;
  await sleep(settleMs);
  const after = rssKiB(srv.pid);
  const thr1 = threads(srv.pid);
  const fd1 = fdCount(srv.pid);
  // The server must really hold K more sockets (else the per-connection figure means nothing);
  // the slack is for the HTTP keep-alive connections of the signups, which may close meanwhile.
  if (fd0 !== null && fd1 !== null && fd1 - fd0 < K - 16) problem('server_holds_fewer_fds', { before: fd0, after: fd1, conns: K });
  const open = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  if (open !== K) problem('idle_sockets_closed', { opened: K, still_open: open });
  const idleFrames = frames;
  // Still answering? One ping op on a sample of the sockets.
  const sample = sockets.filter((_, i) => i % Math.max(1, Math.floor(K / 20)) === 0);
  const pongs = await Promise.all(sample.map((ws) => new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), 10000);
    ws.on('message', (d) => { if (String(d).includes('"pong"')) { clearTimeout(t); resolve(true); } });
    ws.send('{"op":"ping"}');
  })));
  if (pongs.some((x) => !x)) problem('idle_socket_no_pong', { sampled: sample.length, answered: pongs.filter(Boolean).length });
  closeAll(sockets);
  return {
    params,
    conns: K, open_after_settle: open, frames_while_idle: idleFrames,
    seconds_to_open: Math.round(openSecs * 100) / 100,
    rss_before_kib: before, rss_after_kib: after,
    kib_per_conn: before && after ? Math.round(((after - before) / K) * 100) / 100 : null,
    server_threads: [thr0, thr1],
    server_fds: [fd0, fd1],
  };
}

// shutdown-under-load: M senders keep W sends in flight (as send-throughput); after --after-ms
// the server gets SIGTERM. The contract: close 1001 (going away), and an ack means the message
// is committed. Reports how the sockets were closed and how long the exit took, then starts
// the server again on the same data and checks that every acked message is there, with the
// acked seq and client id.
async function shutdownUnderLoad(srv) {
  if (srv.external) throw new Error('shutdown-under-load starts its own server (no --url)');
  const mode = opt.mode;
  const M = int('senders', 50);
  const W = int('window', 32);
  const afterMs = int('after-ms');
  const params = { mode, senders: M, window: W, after_ms: afterMs, body_bytes: BODY_BYTES };
  log(JSON.stringify(params));
  const users = await signupUsers(srv, mode === 'direct' ? 2 * M : M);
  const senders = users.slice(0, M);
  const convOf = await sendersConversations(srv, mode, users, senders, M);
  const run = Math.random().toString(36).slice(2, 8);
  const inflight = new Array(M).fill(0);
  const closed = new Array(M).fill(false);
  const ackedById = new Map(); // client id -> {conv, seq}
  let sockets = [];
  let k = 0;
  function pump(i) {
    while (!closed[i] && inflight[i] < W && sockets[i].readyState === WebSocket.OPEN) {
      const id = `${run}-${i}-${k++}`;
      inflight[i]++;
      sockets[i].send(`{"op":"send","id":"${id}","conv":${convOf[i]},"body":"${pad(`m${k}`)}"}`);
    }
  }
  const onFrameFor = (i) => (o) => {
    if (o.op === 'ack') { inflight[i]--; ackedById.set(o.id, { conv: o.conv, seq: o.seq }); pump(i); }
    else if (o.op === 'error') { inflight[i]--; problem('error_frame', o); }
  };
  sockets = await openMany(srv, senders.map((u) => u.token), onFrameFor);
  const closedAt = [];
  sockets.forEach((ws, i) => ws.on('close', () => { closed[i] = true; closedAt.push(now()); }));
  for (let i = 0; i < M; i++) pump(i);
  await sleep(afterMs);
  expectServerClose = true;
  const ackedBefore = ackedById.size;
  const t0 = now();
  srv.child.kill('SIGTERM');
  const exitTimer = setTimeout(() => srv.child.kill('SIGKILL'), 15000);
  const exit = await srv.exited;
  clearTimeout(exitTimer);
  const exitSecs = (now() - t0) / 1000;
  await until(() => closed.every(Boolean), now() + 5000);
  if (!(exit.code === 0)) problem(exit.sig === 'SIGKILL' ? 'server_ignored_sigterm' : 'server_bad_exit_on_sigterm', exit);
  const codes = {};
  for (const [c, n] of Object.entries(closeCodes)) codes[c] = n;
  const not1001 = Object.entries(codes).filter(([c]) => c !== '1001').reduce((a, [, n]) => a + n, 0);
  if (not1001) problem('close_not_1001_on_sigterm', { close_codes: codes });

  // Restart on the same data; every acked message must be there.
  const srv2 = await startServer({ port: srv.port, dataDir: srv.dataDir });
  const stored = new Map(); // id -> {conv, seq}
  for (const conv of new Set(convOf)) {
    const tok = senders[convOf.indexOf(conv)].token;
    let after = 0;
    for (;;) {
      const page = await http(srv2, 'GET', `/api/conversations/${conv}/messages?after=${after}&limit=200`, { token: tok });
      for (const m of page.messages) stored.set(m.id, { conv: m.conv, seq: m.seq });
      if (!page.messages.length || !page.has_more) break;
      after = page.messages[page.messages.length - 1].seq;
    }
  }
  let lost = 0, moved = 0;
  for (const [id, a] of ackedById) {
    const st = stored.get(id);
    if (!st) { lost++; if (lost <= 5) problem('acked_message_lost', { id, ...a }); }
    else if (st.seq !== a.seq || st.conv !== a.conv) { moved++; if (moved <= 5) problem('acked_message_changed', { id, acked: a, stored: st }); }
  }
  const st2 = await srv2.stop({ keepData: true });
  if (st2.code !== 0) problem('restarted_server_bad_exit', st2);
  return {
    params,
    acked_before_sigterm: ackedBefore, acked: ackedById.size, stored: stored.size,
    stored_but_not_acked: stored.size - ackedById.size + lost,
    acked_lost: lost, acked_changed: moved,
    exit, seconds_to_exit: Math.round(exitSecs * 1000) / 1000,
    close_codes: codes,
    last_close_after_sigterm_s: closedAt.length ? Math.round(Math.max(...closedAt) - t0) / 1000 : null,
  };
}

// signup-storm: C clients, each on its own keep-alive HTTP connection, sign up U users in
// total back to back. A 503 is retried on the same connection after its Retry-After (else 50 ms).
// Reports 201s, 503s and, per client, the longest time it was refused in a row.
async function signupStorm(srv) {
  const C = int('clients');
  const U = int('users', 200);
  const maxMs = int('max-seconds', 120) * 1000;
  const params = { clients: C, users: U, max_seconds: maxMs / 1000 };
  log(JSON.stringify(params));
  const u = new URL(srv.url);
  const tag = Math.random().toString(36).slice(2, 8);
  let next = 0, created = 0, refused = 0, withRetryAfter = 0;
  const other = {};
  const streakMax = new Array(C).fill(0);
  const t0 = now();
  async function client(ci) {
    const agent = new httpMod.Agent({ keepAlive: true, maxSockets: 1 });
    let i = next++;
    let streakStart = null;
    while (i < U && now() - t0 < maxMs) {
      const body = JSON.stringify({ username: `s${tag}_${i}`, password: 'bench-password-1' });
      const res = await new Promise((resolve, reject) => {
        const rq = httpMod.request({ host: u.hostname, port: u.port, path: '/api/auth/signup', method: 'POST', agent,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (r) => {
          r.resume();
          r.on('end', () => resolve({ status: r.statusCode, retryAfter: r.headers['retry-after'] }));
        });
        rq.on('error', reject);
        rq.end(body);
      });
      if (res.status === 503) {
        refused++;
        if (res.retryAfter !== undefined) withRetryAfter++;
        if (streakStart === null) streakStart = now();
        streakMax[ci] = Math.max(streakMax[ci], now() - streakStart);
        await sleep(res.retryAfter !== undefined ? Number(res.retryAfter) * 1000 : 50);
        continue;
      }
      streakStart = null;
      if (res.status === 201) created++;
      else other[res.status] = (other[res.status] || 0) + 1;
      i = next++;
    }
    agent.destroy();
  }
  await Promise.all(Array.from({ length: C }, (_, ci) => client(ci)));
  const maxHashes = Number(extraEnv.PARLEY_MAX_HASHES || 4);
  if (created < U) problem('signups_not_done', { created, users: U, seconds: (now() - t0) / 1000 });
  if (refused && C <= maxHashes) problem('signup_refused_within_max_hashes', { clients: C, max_hashes: maxHashes, refused, longest_refusal_ms: Math.round(Math.max(...streakMax)) });
  return {
    params, created, refused_503: refused, refused_with_retry_after: withRetryAfter, other_status: other,
    seconds: Math.round(now() - t0) / 1000,
    longest_refusal_ms_per_client: streakMax.map(Math.round),
  };
}

// ------------------------------------------------------------------------------------ main

const machine = {
  cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model || '?', mem_gib: Math.round(os.totalmem() / 2 ** 30),
  kernel: os.release(), node: process.version, loadavg_at_start: os.loadavg().map((x) => Math.round(x * 100) / 100),
};

let srv = null;
let result = { server: label, binary: opt.url || serverBin, env: extraEnv, scenario, machine };
let exitCode = 0;
try {
  srv = await startServer();
  result.pid = srv.pid;
  result.rss_at_start_kib = srv.pid ? rssKiB(srv.pid) : null;
  const fn = { 'send-throughput': sendThroughput, fanout, 'idle-memory': idleMemory, 'shutdown-under-load': shutdownUnderLoad, 'signup-storm': signupStorm }[scenario];
  Object.assign(result, await fn(srv));
  if (scenario === 'send-throughput') result.scenario = `send-throughput/${opt.mode}`;
} catch (e) {
  problem('run_failed', e.stack || String(e));
  srv = srv || e.srv || null;
  exitCode = 2;
}

if (srv && !srv.external) {
  const aliveBeforeStop = srv.alive();
  if (!aliveBeforeStop && scenario !== 'shutdown-under-load') {
    problem('server_crashed', { exit: srv.exitInfo });
    exitCode = 2;
  }
  await sleep(100); // let our close frames reach the server before SIGTERM
  const st = await srv.stop();
  result.server_exit = st;
  if (aliveBeforeStop && st.killed) problem('server_ignored_sigterm', st);
  else if (aliveBeforeStop && (st.code !== 0 && !(st.code === null && st.sig === 'SIGTERM'))) problem('server_bad_exit_on_sigterm', st);
  const tail = srv.stderrTail();
  if (/Sanitizer|runtime error:|Segmentation|Aborted|assert/i.test(tail)) problem('server_stderr_alarm', tail.slice(-2000));
  result.server_output_tail = tail.slice(-3000);
}
result.machine.loadavg_at_end = os.loadavg().map((x) => Math.round(x * 100) / 100);
result.frames_by_op = framesByOp;
result.setup_http_retries = setupRetries;
result.problems = problems;
if (exitCode === 0 && problems.some((p) => !['conns_lowered_for_ulimit'].includes(p.kind))) exitCode = 1;
result.ok = exitCode === 0;

// human summary on stderr
const h = [];
if (result.acked_per_s !== undefined) h.push(`acked/s=${result.acked_per_s} ack p50=${result.ack_latency_ms?.p50}ms p99=${result.ack_latency_ms?.p99}ms acked=${result.acked}`);
if (result.delivered_per_s !== undefined) h.push(`delivered/s=${result.delivered_per_s} e2e p50=${result.e2e_latency_ms?.p50}ms p99=${result.e2e_latency_ms?.p99}ms`);
if (result.close_codes !== undefined) h.push(`SIGTERM: exit ${JSON.stringify(result.exit)} in ${result.seconds_to_exit}s, close codes ${JSON.stringify(result.close_codes)}, acked=${result.acked} stored=${result.stored} lost=${result.acked_lost}`);
if (result.refused_503 !== undefined) h.push(`signups: created=${result.created} refused(503)=${result.refused_503} longest refusal per client ms=${JSON.stringify(result.longest_refusal_ms_per_client)} in ${result.seconds}s`);
if (result.kib_per_conn !== undefined) h.push(`KiB/conn=${result.kib_per_conn} rss ${result.rss_before_kib}->${result.rss_after_kib} KiB`);
if (result.cpu) h.push(`cpu: server=${result.cpu.server_cpu_s}s client=${result.cpu.client_cpu_s}s other=${result.cpu.other_cpu_s}s wall=${result.cpu.wall_s}s`);
log(h.join(' | ') || 'no result');
for (const p of problems.slice(0, 10)) log('PROBLEM', p.kind, typeof p.detail === 'string' ? p.detail.slice(0, 500) : JSON.stringify(p.detail).slice(0, 500));
if (problems.length && result.server_output_tail) log('server output (tail):\n' + result.server_output_tail.slice(-1500));
if (opt.json) process.stdout.write(JSON.stringify(result) + '\n');
process.exit(exitCode);
