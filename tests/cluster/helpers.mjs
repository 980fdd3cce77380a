// Helpers for the cluster tests: a real cluster started by scripts/cluster (Redis, a
// PostgreSQL primary and streaming replica, three parleyd nodes, HAProxy), driven through
// the SDK (web/parley.js, with `ws`) and plain HTTP. Every wait is bounded.
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WS from 'ws';
import { ParleyClient } from '../../web/parley.js';

// The same as the SDK tests': per conversation, seqs and bodies in arrival order; a sleep.
export { collect, sleep } from '../sdk/helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const top = path.resolve(here, '../..');
export const DIR = process.env.PARLEY_CLUSTER_DIR || '/tmp/parley-cluster-test';

// The cluster's addresses, from its state file.
export function env() {
  const out = execFileSync(path.join(top, 'scripts/cluster'), ['env', '--dir', DIR], { encoding: 'utf8' });
  const e = {};
  for (const line of out.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) e[line.slice(0, i)] = line.slice(i + 1);
  }
  e.port = Number(e.port);
  e.nodes = Number(e.nodes);
  return e;
}

export function frontUrl(e) { return `http://127.0.0.1:${e.port}`; }
export function nodeUrl(e, n) { return `http://127.0.0.1:${e.port + n}`; }

// scripts/cluster <cmd> [arg] on this cluster; throws with its output on failure.
export function cluster(cmd, arg) {
  const args = [cmd, '--dir', DIR];
  if (arg !== undefined) args.push(String(arg));
  const r = spawnSync(path.join(top, 'scripts/cluster'), args, { encoding: 'utf8', timeout: 120000 });
  if (r.status !== 0) throw new Error(`scripts/cluster ${cmd} ${arg ?? ''}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

// SQL as the superuser on the unix socket of a PostgreSQL of the cluster (which: primary|replica).
export function psql(e, which, sql) {
  const port = which === 'replica' ? e.pg_replica_port : e.pg_primary_port;
  const r = spawnSync('runuser', ['-u', 'postgres', '--', '/usr/lib/postgresql/15/bin/psql', '-X', '-q', '-A', '-t',
    '-h', path.join(DIR, `pg-${which}`), '-p', String(port), '-d', 'parley', '-c', sql],
  { encoding: 'utf8', timeout: 30000 });
  if (r.status !== 0) throw new Error(`psql ${which}: ${r.stderr}`);
  return r.stdout.trim();
}

let seq = 0;
export function uname(prefix = 'c') {
  return `${prefix}${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}${(seq++).toString(36)}`;
}

export function client(url, opts = {}) {
  return new ParleyClient({
    url,
    WebSocket: WS,
    storage: false,
    reconnect: { initialMs: 100, maxMs: 1000 },
    ...opts,
  });
}

export async function waitFor(pred, timeout = 15000, what = 'condition') {
  const until = Date.now() + timeout;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}


// A signed-up user whose SDK client is online at url.
export async function user(url, prefix = 'c') {
  const c = client(url);
  await c.signup({ username: uname(prefix), password: 'password-123' });
  await waitFor(() => c.state === 'online', 15000, 'client online');
  return c;
}


export async function readyz(url) {
  try {
    const r = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) });
    return r.status;
  } catch {
    return 0;
  }
}

// Asserts 1..n exactly once each, in order.
export function dense(seqs, n) {
  if (seqs.length !== n) return false;
  for (let i = 0; i < n; i++) if (seqs[i] !== i + 1) return false;
  return true;
}
