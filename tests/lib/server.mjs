// Starts a real parleyd (or any server speaking the protocol) for a test:
// a free loopback port, a temporary data directory, and a clean stop.
//
// The binary comes from $PARLEYD (the Makefile sets it to the release or the
// ASan build); extra environment (PARLEY_*) can be passed per server.
// $PARLEYD_WRAPPER, when set, is a command line the server runs under (split on
// spaces: `make test-valgrind` sets it to valgrind with its options), and
// $PARLEY_TEST_TIME_SCALE multiplies the waits here and in the e2e helpers (a
// server under valgrind is 20-50x slower).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function binary() {
  return process.env.PARLEYD || path.join(root, 'build/release/parleyd');
}

// The factor for every bounded wait of the suite (1 unless PARLEY_TEST_TIME_SCALE).
export const TIME_SCALE = Math.max(1, Number(process.env.PARLEY_TEST_TIME_SCALE) || 1);

function command(args) {
  const wrap = (process.env.PARLEYD_WRAPPER || '').split(' ').filter(Boolean);
  return wrap.length ? [wrap[0], [...wrap.slice(1), binary(), ...args]] : [binary(), args];
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, child, deadlineMs) {
  const until = Date.now() + deadlineMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited early with ${child.exitCode}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`server did not listen on ${port} in time`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// start({env, dataDir, port}) -> {url, wsUrl, port, dataDir, child, stop(signal), kill9(), restart()}
export async function start(opts = {}) {
  const port = opts.port || (await freePort());
  const dataDir = opts.dataDir || mkdtempSync(path.join(os.tmpdir(), 'parley-test-'));
  const env = {
    ...process.env,
    PARLEY_LISTEN: `127.0.0.1:${port}`,
    PARLEY_DATA: dataDir,
    PARLEY_JWT_SECRET: 'test-secret-0123456789abcdef0123456789',
    PARLEY_WORKERS: '2',
    PARLEY_LOG_LEVEL: 'warn',
    // SIGTERM drains at once in tests (the drain's own tests set these)
    PARLEY_DRAIN_DELAY_S: '0',
    PARLEY_DRAIN_SECONDS: '0',
    ...(opts.env || {}),
  };
  const [cmd, argv] = command(opts.args || []);
  const child = spawn(cmd, argv, { env, stdio: ['ignore', 'inherit', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (process.env.PARLEY_TEST_VERBOSE) process.stderr.write(d);
  });
  const checkSanitizers = () => {
    const m = /(ERROR: (Address|Leak)Sanitizer|runtime error:)[^\n]*/.exec(stderr);
    if (m) throw new Error(`parleyd reported a sanitizer error: ${m[0]}\n${stderr.slice(-4000)}`);
    // The wrapper's own report ($PARLEYD_WRAPPER_LOG, %p: the pid; valgrind's
    // --log-file), read once the process has exited: any error fails the stop.
    const tpl = process.env.PARLEYD_WRAPPER_LOG;
    if (!tpl || child.exitCode === null) return;
    let log = '';
    try { log = readFileSync(tpl.replace('%p', String(child.pid)), 'utf8'); } catch { return; }
    const e = /ERROR SUMMARY: ([1-9]\d*) errors?/.exec(log);
    if (e) throw new Error(`parleyd under ${process.env.PARLEYD_WRAPPER.split(' ')[0]}: ${e[0]}\n${log.slice(-4000)}`);
  };
  const exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve({ code, sig })));
  await waitForPort(port, child, 20000 * TIME_SCALE);
  const srv = {
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    dataDir,
    child,
    exited,
    get stderr() { return stderr; },
    // Graceful stop; resolves {code, sig}. Removes the data dir unless keep.
    // Throws if the server reported a sanitizer error (ASan, LSan, UBSan):
    // under `make test-asan` that is how a leak or UB fails the suite.
    async stop({ signal = 'SIGTERM', keep = false } = {}) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const res = await exited;
      if (!keep && !opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
      checkSanitizers();
      return res;
    },
    async kill9() {
      child.kill('SIGKILL');
      return exited;
    },
    // A new server on the same port and data directory (after stop/kill9).
    async restart(extra = {}) {
      return start({ ...opts, ...extra, port, dataDir });
    },
  };
  return srv;
}
