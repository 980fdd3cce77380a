// Starts a real parleyd (or any server speaking the protocol) for a test:
// a loopback port chosen by the kernel, a temporary data directory, and a clean stop.
//
// The binary comes from $PARLEYD (the Makefile sets it to the release or the
// ASan build); extra environment (PARLEY_*) can be passed per server.
// $PARLEYD_WRAPPER, when set, is a command line the server runs under (split on
// spaces: `make test-valgrind` sets it to valgrind with its options), and
// $PARLEY_TEST_TIME_SCALE multiplies the waits here and in the e2e helpers (a
// server under valgrind is 20-50x slower).
//
// The port: parleyd is started on 127.0.0.1:0 and the harness reads the port the
// kernel gave it from its startup line ("parleyd listening on http://127.0.0.1:PORT/",
// logged at level info, which is why the harness runs it at info). No port is picked
// and released beforehand, so no other process can take it in between.
// restart() starts the new process on the port the first one got, because the
// clients of a test (an SDK client, say) reconnect to the same URL. That port was
// ours a moment before; only a process binding it in the instant between the two is
// a risk, and then the restart fails loudly (parleyd exits: "cannot listen") rather
// than the test talking to someone else.
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

// pre: a command of the test's own that runs parleyd (prlimit, say), before $PARLEYD_WRAPPER.
function command(args, pre = []) {
  const wrap = [...pre, ...(process.env.PARLEYD_WRAPPER || '').split(' ').filter(Boolean)];
  return wrap.length ? [wrap[0], [...wrap.slice(1), binary(), ...args]] : [binary(), args];
}

// A port free at the time of asking, for tools that must name one before they start
// (bench). Racy by nature; the servers started here do not use it.
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

// parleyd's startup lines (plain or --log-format json) carry the bound ports.
const LISTEN_RE = /parleyd listening on http:\/\/(?:\[[^\]]*\]|[^/:\s]+):(\d+)\//;
const METRICS_RE = /parleyd metrics listening on http:\/\/(?:\[[^\]]*\]|[^/:\s]+):(\d+)\/metrics/;

// Resolves the public port once the startup line is out (every listener is bound and
// listening before it is written); rejects when the process exits first or on timeout.
function waitForListening(child, out, deadlineMs) {
  return new Promise((resolve, reject) => {
    let timer;
    const finish = (fn, v) => {
      clearTimeout(timer);
      child.off('exit', onExit);
      out.onData = null;
      fn(v);
    };
    const check = () => {
      const m = LISTEN_RE.exec(out.text);
      if (m) finish(resolve, +m[1]);
    };
    const onExit = (code, sig) => finish(reject, new Error(`server exited early with ${code ?? sig}: ${out.text.slice(-2000)}`));
    child.once('exit', onExit);
    timer = setTimeout(() => finish(reject, new Error(`server did not log its listening address within ${deadlineMs} ms: ${out.text.slice(-2000)}`)), deadlineMs);
    out.onData = check;
    check();
  });
}

// start({env, dataDir, port, wrap}) -> {url, wsUrl, port, metricsPort, dataDir, child, stop(signal), kill9(), restart()}
// port: 0 (default) lets the kernel choose. PARLEY_METRICS_LISTEN may end in :0 as
// well; metricsPort is the port the metrics listener got (null without one).
export async function start(opts = {}) {
  const want = opts.port || 0;
  const dataDir = opts.dataDir || mkdtempSync(path.join(os.tmpdir(), 'parley-test-'));
  const env = {
    ...process.env,
    PARLEY_LISTEN: `127.0.0.1:${want}`,
    PARLEY_DATA: dataDir,
    PARLEY_JWT_SECRET: 'test-secret-0123456789abcdef0123456789',
    PARLEY_WORKERS: '2',
    // SIGTERM drains at once in tests (the drain's own tests set these)
    PARLEY_DRAIN_DELAY_S: '0',
    PARLEY_DRAIN_SECONDS: '0',
    ...(opts.env || {}),
  };
  // The line that tells the port is logged at info; debug shows it too.
  if (env.PARLEY_LOG_LEVEL !== 'debug') env.PARLEY_LOG_LEVEL = 'info';
  const [cmd, argv] = command(opts.args || [], opts.wrap || []);
  const child = spawn(cmd, argv, { env, stdio: ['ignore', 'inherit', 'pipe'] });
  const out = { text: '', onData: null, watchers: new Set() };
  child.stderr.on('data', (d) => {
    out.text += d;
    if (process.env.PARLEY_TEST_VERBOSE) process.stderr.write(d);
    if (out.onData) out.onData();
    for (const w of [...out.watchers]) w();
  });
  const checkSanitizers = () => {
    const m = /(ERROR: (Address|Leak)Sanitizer|runtime error:)[^\n]*/.exec(out.text);
    if (m) throw new Error(`parleyd reported a sanitizer error: ${m[0]}\n${out.text.slice(-4000)}`);
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
  let port;
  try {
    port = await waitForListening(child, out, 20000 * TIME_SCALE);
  } catch (e) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (!opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }
  if (want && port !== want) throw new Error(`server listens on ${port}, not on ${want} as asked`);
  const m = METRICS_RE.exec(out.text);
  const srv = {
    port,
    metricsPort: m ? +m[1] : null,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    dataDir,
    child,
    exited,
    get stderr() { return out.text; },
    // Resolves the match of re in the server's log (level info) once a line matches, from
    // the start of the log on: an event the server reports, waited for instead of polling.
    waitForLog(re, timeoutMs = 10000) {
      return new Promise((resolve, reject) => {
        let timer;
        const check = () => {
          const m = re.exec(out.text);
          if (!m) return;
          clearTimeout(timer);
          out.watchers.delete(check);
          resolve(m);
        };
        timer = setTimeout(() => { out.watchers.delete(check); reject(new Error(`no log line matching ${re} within ${timeoutMs} ms: ${out.text.slice(-1000)}`)); }, timeoutMs);
        out.watchers.add(check);
        check();
      });
    },
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
    // A new server on the same port and data directory (after stop/kill9); why the
    // same port: see the top of this file.
    async restart(extra = {}) {
      return start({ ...opts, ...extra, port, dataDir });
    },
  };
  return srv;
}
