// Crash consistency: many clients send as fast as the server acks (WebSocket, each with a
// window of unacked sends, plus HTTP posters), parleyd is killed with SIGKILL at a random
// moment, restarted on the same data (SQLite in its data directory, or PostgreSQL), and
// every conversation's history is read back over HTTP:
//   - every acked message (ack frame or HTTP 201) is there exactly once, at its acked seq,
//     with its body;
//   - seqs are dense per conversation (1..last_seq, no hole, no repeat), last_seq agrees;
//   - no (sender, client id) is stored twice.
// Then the clients resend everything that was not acked (and a few that were), as the
// protocol tells them to, and the same checks hold for everything sent.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { start } from '../lib/server.mjs';
import { SECRET, http, sleep, need, signupMany, seedUsers, createGroup, fullHistory, checkStored } from './lib.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const USERS = 24;      // each with one WebSocket
const GROUPS = 6;      // each user in two groups (7-8 members each)
const WINDOW = 16;     // unacked sends per client
const HTTP_POSTERS = 2;
const RUN_BOUND_MS = 120000; // a PostgreSQL run signs its users up too: 300 s

function openWs(srv, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(srv.wsUrl, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false, handshakeTimeout: 10000 });
    const t = setTimeout(() => { ws.terminate(); reject(new Error('no hello in 10 s')); }, 10000);
    ws.on('error', () => {});
    ws.on('message', function first(d) {
      if (JSON.parse(d.toString()).op !== 'hello') return;
      clearTimeout(t);
      ws.off('message', first);
      resolve(ws);
    });
    ws.once('close', () => { clearTimeout(t); reject(new Error('closed before hello')); });
  });
}

const closed = (ws) => (ws.readyState === WebSocket.CLOSED ? Promise.resolve() : new Promise((r) => ws.once('close', r)));

const envFor = (pgUrl) => ({
  PARLEY_JWT_SECRET: SECRET, PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0',
  PARLEY_SIGNUPS_PER_MIN: '0', PARLEY_CONVS_PER_MIN: '0', PARLEY_WORKERS: '2',
  PARLEY_ACCESS_TTL_S: '86400', ...(pgUrl ? { PARLEY_DB_URL: pgUrl } : {}),
});

// The users and groups of a run: each user in two groups.
async function populate(srv, tag, seeded = null) {
  const users = seeded || await signupMany(srv, USERS, tag);
  const convsOf = users.map(() => []);
  const convs = [];
  for (let g = 0; g < GROUPS; g++) {
    const members = users.map((_, i) => i).filter((i) => i % GROUPS === g || Math.floor(i / (USERS / GROUPS)) === g);
    const id = await createGroup(srv, users[members[0]], members.slice(1).map((i) => users[i].id), `crash ${tag}/${g}`);
    convs.push({ id, members });
    for (const i of members) convsOf[i].push(id);
  }
  return { users, convs, convsOf };
}

// Signing up costs a password hash each (argon2id, deliberately slow): the SQLite runs
// start from copies of one data directory made once, its users written into the database
// (lib.mjs seedUsers) and its groups created over HTTP.
export async function sqliteTemplate() {
  let srv = await start({ env: envFor(null) });
  try {
    await signupMany(srv, 1, 'first');
    await srv.stop({ keep: true });
    const users = seedUsers(srv.dataDir, USERS, 'k', 86400);
    srv = await srv.restart();
    const pop = await populate(srv, 'k', users);
    await srv.stop({ keep: true });
    return { dir: srv.dataDir, ...pop };
  } catch (e) {
    await srv.stop({ keep: true }).catch(() => {});
    rmSync(srv.dataDir, { recursive: true, force: true });
    throw e;
  }
}

// One run: returns its figures; `ok` says whether every check held. template: from
// sqliteTemplate() (SQLite), or null (a fresh store, populated here: PostgreSQL).
export async function crashRun({ rep, pgUrl = null, template = null, log = () => {} }) {
  const t0 = Date.now();
  const env = envFor(pgUrl);
  const r = { rep, store: pgUrl ? 'PostgreSQL' : 'SQLite', sent: 0, acked: 0, ackedHttp: 0, stored: 0, found: 0, missing: 0, dups: 0, holes: 0, mismatched: 0, lastSeqWrong: 0, retried: 0, afterRetry: null, problems: [] };
  let dataDir = null;
  if (template) {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'parley-crash-'));
    cpSync(template.dir, dataDir, { recursive: true });
  }
  let srv = await start({ env, ...(dataDir ? { dataDir } : {}) });
  dataDir = srv.dataDir;
  try {
    const { users, convs, convsOf } = template || await populate(srv, `k${rep}x`);
    await Promise.all(users.map((u) => http(srv, 'GET', '/api/me', { token: u.token }).then((m) => need(m.status === 200, `token of ${u.username}: ${m.status}`))));
    r.setupSecs = (Date.now() - t0) / 1000;
    const sockets = await Promise.all(users.map((u) => openWs(srv, u.token)));

    // Everything sent, by "from/id"; everything acked, with its seq.
    const sent = new Map();
    const acked = new Map();
    let stop = false;
    let k = 0;
    const body = (i) => `rep ${rep} user ${i} #${k} ${randomBytes(randomInt(1, 150)).toString('base64')}`;
    const sendOne = (i) => {
      if (stop) return;
      const conv = convsOf[i][randomInt(convsOf[i].length)];
      const m = { from: users[i].id, id: `c${rep}-${i}-${k++}`, conv, body: body(i) };
      sent.set(`${m.from}/${m.id}`, m);
      sockets[i].send(JSON.stringify({ op: 'send', id: m.id, conv, body: m.body }));
    };
    sockets.forEach((ws, i) => {
      ws.on('message', (d) => {
        const f = JSON.parse(d.toString());
        if (f.op === 'ack') {
          const m = sent.get(`${users[i].id}/${f.id}`);
          if (!m || f.conv !== m.conv) r.problems.push(`ack for something not sent: ${d}`);
          else acked.set(`${m.from}/${m.id}`, { ...m, seq: f.seq });
          sendOne(i);
        } else if (f.op === 'error') {
          r.problems.push(`error frame before the kill: ${d}`);
        }
      });
    });
    const poster = async (i) => {
      while (!stop) {
        const conv = convsOf[i][randomInt(convsOf[i].length)];
        const m = { from: users[i].id, id: `h${rep}-${i}-${k++}`, conv, body: body(i) };
        sent.set(`${m.from}/${m.id}`, m);
        let res;
        try { res = await http(srv, 'POST', `/api/conversations/${conv}/messages`, { token: users[i].token, body: { id: m.id, body: m.body }, timeoutMs: 10000 }); } catch { return; }
        if (res.status === 201) {
          acked.set(`${m.from}/${m.id}`, { ...m, seq: res.body.seq });
          r.ackedHttp++;
        } else if (!stop) r.problems.push(`POST before the kill: ${res.status} ${res.text}`);
      }
    };

    // Load, then SIGKILL at a random moment while it runs.
    for (let i = 0; i < USERS; i++) for (let w = 0; w < WINDOW; w++) sendOne(i);
    const posters = Array.from({ length: HTTP_POSTERS }, (_, j) => poster(j));
    r.killAfterMs = randomInt(300, 3000);
    await sleep(r.killAfterMs);
    const exit = await srv.kill9();
    need(exit.sig === 'SIGKILL', `the server was not killed by SIGKILL: ${JSON.stringify(exit)}`);
    stop = true;
    await Promise.race([Promise.all(sockets.map(closed)), sleep(10000)]);
    sockets.forEach((ws) => ws.terminate());
    await Promise.race([Promise.all(posters), sleep(12000)]);
    r.sent = sent.size;
    r.acked = acked.size;

    // Restart on the same data; read everything back.
    srv = await srv.restart();
    const t1 = Date.now();
    const verify = async (expected) => {
      const out = { stored: 0, found: 0, missing: 0, dups: 0, holes: 0, mismatched: 0, lastSeqWrong: 0 };
      const seenAnywhere = new Set();
      for (const c of convs) {
        const token = users[c.members[0]].token;
        const hist = await fullHistory(srv, token, c.id);
        const res = checkStored(hist, expected.filter((m) => m.conv === c.id));
        for (const key of Object.keys(res)) out[key] += res[key];
        out.stored += hist.length;
        for (const m of hist) {
          const key = `${m.from}/${m.id}`;
          if (seenAnywhere.has(key)) out.dups++; // the same client id in two conversations
          seenAnywhere.add(key);
        }
        const conv = await http(srv, 'GET', `/api/conversations/${c.id}`, { token });
        if (conv.body.last_seq !== hist.length || (hist.length && hist[hist.length - 1].seq !== hist.length)) out.lastSeqWrong++;
      }
      return out;
    };
    Object.assign(r, await verify([...acked.values()]));
    r.verifySecs = (Date.now() - t1) / 1000;

    // Resend what was not acked, plus a few that were (they must keep their seq).
    const todo = [...sent.values()].filter((m) => !acked.has(`${m.from}/${m.id}`));
    const again = [...acked.values()].slice(0, 5);
    r.retried = todo.length;
    const byUser = new Map(users.map((u, i) => [u.id, i]));
    const sockets2 = await Promise.all(users.map((u) => openWs(srv, u.token)));
    // One listener per socket, answers matched by client id.
    const pending = new Map();
    sockets2.forEach((ws, i) => ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      const done = (f.op === 'ack' || f.op === 'error') && pending.get(`${users[i].id}/${f.id}`);
      if (done) done(f);
    }));
    const waits = [];
    for (const m of [...todo, ...again]) {
      const key = `${m.from}/${m.id}`;
      waits.push(new Promise((resolve) => {
        const t = setTimeout(() => { pending.delete(key); resolve(null); }, 30000);
        pending.set(key, (f) => { clearTimeout(t); pending.delete(key); resolve(f); });
      }));
      sockets2[byUser.get(m.from)].send(JSON.stringify({ op: 'send', id: m.id, conv: m.conv, body: m.body }));
    }
    const answers = await Promise.all(waits);
    const all = new Map(acked);
    let refused = 0;
    answers.forEach((f, j) => {
      const m = j < todo.length ? todo[j] : again[j - todo.length];
      if (!f || f.op !== 'ack') { refused++; return; }
      if (j >= todo.length && f.seq !== m.seq) r.problems.push(`acked ${m.id} resent: seq ${f.seq}, was ${m.seq}`);
      all.set(`${m.from}/${m.id}`, { ...m, seq: f.seq });
    });
    sockets2.forEach((ws) => ws.close());
    if (refused) r.problems.push(`${refused} resends not acked`);
    r.afterRetry = await verify([...all.values()]);
    r.afterRetry.expected = all.size;

    const stopped = await srv.stop({ keep: true });
    if (stopped.code !== 0) r.problems.push(`graceful stop after the checks exited ${JSON.stringify(stopped)}`);
  } catch (e) {
    r.problems.push(String(e && e.stack || e).split('\n').slice(0, 3).join(' | '));
    if (srv.child.exitCode === null && srv.child.signalCode === null) await srv.kill9();
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
  const a = r.afterRetry;
  if (r.missing || r.dups || r.holes || r.mismatched || r.lastSeqWrong) r.problems.push('the acked messages did not survive intact');
  if (!a || a.missing || a.dups || a.holes || a.mismatched || a.lastSeqWrong || a.found !== a.expected) r.problems.push('after the resends: not everything sent is stored exactly once');
  r.ok = r.problems.length === 0;
  r.secs = (Date.now() - t0) / 1000;
  log(`crash ${r.store} #${rep}: kill -9 after ${r.killAfterMs} ms; sent ${r.sent}, acked ${r.acked} (${r.ackedHttp} over HTTP), ` +
      `stored ${r.stored}; found ${r.found}, missing ${r.missing}, dups ${r.dups}, holes ${r.holes}, mismatched ${r.mismatched}; ` +
      `resent ${r.retried} -> ${a ? `${a.found}/${a.expected} stored once, dups ${a.dups}, holes ${a.holes}` : '-'}; ` +
      `${r.secs.toFixed(1)} s (setup ${r.setupSecs}, verify ${r.verifySecs}) ${r.ok ? 'OK' : 'FAIL: ' + r.problems.join('; ')}`);
  return r;
}

// A run with a time bound: a run that hangs is a failure, not a hung suite.
export async function boundedRun(opts) {
  let timer;
  const bound = opts.pgUrl ? 300000 : RUN_BOUND_MS;
  const limit = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ rep: opts.rep, store: opts.pgUrl ? 'PostgreSQL' : 'SQLite', ok: false, problems: [`the run took more than ${bound / 1000} s`] }), bound);
  });
  try { return await Promise.race([crashRun(opts), limit]); } finally { clearTimeout(timer); }
}

// A throwaway PostgreSQL (scripts/pgtmp) around fn(url); stopped and removed after.
export async function withPostgres(fn) {
  const dir = `/tmp/parley-soak-pg-${randomBytes(4).toString('hex')}`;
  const pgtmp = path.join(root, 'scripts/pgtmp');
  const url = execFileSync(pgtmp, ['start', dir], { encoding: 'utf8', timeout: 120000 }).trim();
  try { return await fn(url); } finally {
    try { execFileSync(pgtmp, ['stop', dir], { timeout: 120000 }); } catch { /* reported by the run */ }
    rmSync(dir, { recursive: true, force: true });
  }
}
