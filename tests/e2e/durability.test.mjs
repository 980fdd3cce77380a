// Crash and shutdown: every acked message survives `kill -9` exactly once (and retrying the
// unacked ones after restart is safe); SIGTERM drains with close code 1001 and exit status 0.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import {
  startServer, signupMany, createGroup, openSocket, rawSocket, closeAll, fullHistory, uniq, http,
} from './helpers.mjs';

const running = new Set();
const dirs = new Set();
after(async () => {
  const errors = [];
  for (const s of running) await s.stop().catch((e) => errors.push(e)); // e.g. a sanitizer report
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  if (errors.length) throw errors[0];
});

async function launch(env) {
  const s = await startServer(env);
  running.add(s);
  dirs.add(s.dataDir);
  return s;
}
async function relaunch(old) {
  running.delete(old);
  const s = await old.restart();
  running.add(s);
  return s;
}

// Checks a history against the acks a client saw: every acked (sender, id) is there exactly once,
// at its acked seq and ts; seqs are dense 1..n; no (sender, id) appears twice.
function checkHistory(hist, acked) {
  assert.deepEqual(hist.map((m) => m.seq), hist.map((_, i) => i + 1), 'seqs are dense 1..n');
  const seen = new Map();
  for (const m of hist) {
    const k = `${m.from}/${m.id}`;
    assert.ok(!seen.has(k), `client id ${k} stored twice (seqs ${seen.get(k)} and ${m.seq})`);
    seen.set(k, m.seq);
  }
  for (const a of acked) {
    const k = `${a.from}/${a.id}`;
    assert.ok(seen.has(k), `acked message ${k} (seq ${a.seq}) is missing after the crash`);
    const m = hist[seen.get(k) - 1];
    assert.equal(m.seq, a.seq, `acked message ${k}: seq`);
    assert.equal(m.ts, a.ts, `acked message ${k}: ts`);
    assert.equal(m.body, a.body, `acked message ${k}: body`);
  }
}

test('kill -9 right after acks, restart on the same data dir: every acked message is there exactly once', async (t) => {
  const srv = await launch({ PARLEY_SEND_BURST: '0' });
  const users = await signupMany(srv, 3, 'crash');
  const g = await createGroup(srv, users[0], users.slice(1).map((u) => u.user.id));
  const conns = [];
  for (const u of users) conns.push(await openSocket(srv, u.token));
  const EACH = 200;
  const KILL_AT = 300;
  const plan = users.map((u, i) => [...Array(EACH)].map((_, k) => ({ id: `k${i}-${k}-${uniq('')}`, from: u.user.id, body: `crash test ${i}/${k}` })));

  // all senders stream their messages; the server is killed as soon as KILL_AT acks arrived
  let acks = 0;
  let onKill;
  const killed = new Promise((resolve) => { onKill = resolve; });
  const sentBy = new Map();
  conns.forEach((c, i) => {
    for (const p of plan[i]) sentBy.set(`${p.from}/${p.id}`, p);
    c.ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      if (f.op === 'ack' && ++acks === KILL_AT) onKill(srv.kill9());
    });
    for (const p of plan[i]) c.send({ op: 'send', id: p.id, conv: g.id, body: p.body });
  });
  let timer;
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`the server did not ack ${KILL_AT} messages in 30 s (got ${acks})`)), 30000); });
  const exit = await Promise.race([killed, timeout]).finally(() => clearTimeout(timer));
  assert.equal(exit.sig, 'SIGKILL');
  await Promise.all(conns.map((c) => c.waitClosed(5000).catch(() => c.ws.terminate())));

  const acked = [];
  conns.forEach((c, i) => {
    for (const f of c.log) {
      if (f.op !== 'ack') continue;
      const p = sentBy.get(`${users[i].user.id}/${f.id}`);
      assert.ok(p, `ack for an id that was sent: ${JSON.stringify(f)}`);
      assert.equal(f.conv, g.id);
      acked.push({ ...p, seq: f.seq, ts: f.ts });
    }
  });
  assert.ok(acked.length >= KILL_AT);

  const srv2 = await relaunch(srv);
  // access tokens issued before the crash are still valid (same secret, not expired)
  const hist = await fullHistory(srv2, users[1], g.id);
  checkHistory(hist, acked);
  assert.ok(hist.length >= acked.length);
  t.diagnostic(`${acked.length} of ${users.length * EACH} sends acked before kill -9; ${hist.length} stored`);
  const conv = await http(srv2, 'GET', `/api/conversations/${g.id}`, { token: users[2].token });
  assert.equal(conv.body.last_seq, hist.length, 'last_seq agrees with the history');

  // the clients retry everything that was not acked: no duplicates, nothing lost
  const conns2 = [];
  try {
    for (const u of users) conns2.push(await openSocket(srv2, u.token));
    const ackedKeys = new Set(acked.map((a) => `${a.from}/${a.id}`));
    const retried = await Promise.all(conns2.map(async (c, i) => {
      const todo = plan[i].filter((p) => !ackedKeys.has(`${p.from}/${p.id}`));
      // plus one that was acked: it must come back with the original seq
      const again = plan[i].find((p) => ackedKeys.has(`${p.from}/${p.id}`));
      if (again) todo.push(again);
      for (const p of todo) c.send({ op: 'send', id: p.id, conv: g.id, body: p.body });
      const out = [];
      for (const p of todo) {
        const f = await c.next((x) => (x.op === 'ack' || x.op === 'error') && x.id === p.id, 20000);
        assert.equal(f.op, 'ack', JSON.stringify(f));
        out.push({ ...p, seq: f.seq, ts: f.ts });
      }
      if (again) {
        const orig = acked.find((a) => a.id === again.id && a.from === again.from);
        assert.equal(out[out.length - 1].seq, orig.seq, 'an acked id resent after the restart gets the original seq');
        assert.equal(out[out.length - 1].ts, orig.ts);
      }
      return out;
    }));
    const final = await fullHistory(srv2, users[0], g.id);
    assert.equal(final.length, users.length * EACH, 'every planned message exactly once');
    checkHistory(final, [...acked, ...retried.flat()]);
  } finally { await closeAll(conns2); }
});

test('SIGTERM: open sockets get close 1001, the server exits 0, and acked messages are kept', async () => {
  const srv = await launch();
  const [a, b] = await signupMany(srv, 2, 'term');
  const g = await createGroup(srv, a, [b.user.id]);
  const a1 = await openSocket(srv, a.token);
  const b1 = await openSocket(srv, b.token);
  const idle = await rawSocket(srv); // not yet authenticated
  assert.ok(idle.isOpen);
  const acked = [];
  for (let i = 0; i < 20; i++) {
    const f = await a1.sendMsg(g.id, `before term ${i}`);
    assert.equal(f.op, 'ack');
    acked.push({ id: f.id, from: a.user.id, seq: f.seq, ts: f.ts, body: `before term ${i}` });
  }
  // a stream in flight while the signal arrives: whatever gets acked must be kept too
  const inflight = [...Array(50)].map((_, i) => ({ id: `t-${i}-${uniq('')}`, body: `during term ${i}` }));
  for (const p of inflight) a1.send({ op: 'send', id: p.id, conv: g.id, body: p.body });

  running.delete(srv);
  const res = await srv.stop({ keep: true });
  assert.deepEqual(res, { code: 0, sig: null }, `exit status after SIGTERM; stderr: ${srv.stderr.slice(-500)}`);
  const [ca, cb] = await Promise.all([a1.waitClosed(5000), b1.waitClosed(5000)]);
  assert.equal(ca.code, 1001, 'close code on a busy socket');
  assert.equal(cb.code, 1001, 'close code on an idle socket');
  const ci = await idle.waitClosed(5000);
  assert.deepEqual([ci.code, ci.reason], [1001, 'server shutting down'], 'every WebSocket, authenticated or not, gets 1001');
  assert.equal(ca.reason, 'server shutting down');
  // the sends in flight are acked (read before the drain) or left unread (the client
  // resends them after reconnecting): none is answered with an error
  assert.deepEqual(a1.log.filter((f) => f.op === 'error'), [], 'no error frame for a send in flight during a graceful stop');
  assert.ok(a1.log.filter((f) => f.op === 'ack').length >= 20);

  for (const f of a1.log) {
    if (f.op !== 'ack' || !f.id.startsWith('t-')) continue;
    const p = inflight.find((x) => x.id === f.id);
    acked.push({ id: f.id, from: a.user.id, seq: f.seq, ts: f.ts, body: p.body });
  }
  const srv2 = await relaunch(srv);
  const hist = await fullHistory(srv2, b, g.id);
  checkHistory(hist, acked);
});

test('kill -9 right after an HTTP 201 (a message, a signup, a conversation): all of it is there after the restart', async () => {
  const srv = await launch();
  const [a, b] = await signupMany(srv, 2, 'http9');
  const g = await createGroup(srv, a, [b.user.id]);
  const id = uniq('h9');
  const r = await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: a.token, body: { id, body: 'answered 201, then kill -9' } });
  assert.equal(r.status, 201, r.text);
  // nothing else happens between the answer and the kill
  running.delete(srv);
  const exit = await srv.kill9();
  assert.equal(exit.sig, 'SIGKILL');
  const srv2 = await relaunch(srv);
  const hist = await fullHistory(srv2, b, g.id);
  assert.deepEqual(hist, [r.body], 'the message answered 201 is stored, as answered');
  // the same id again is the original (200), not a second message
  const again = await http(srv2, 'POST', `/api/conversations/${g.id}/messages`, { token: a.token, body: { id, body: 'resent' } });
  assert.equal(again.status, 200, again.text);
  assert.deepEqual(again.body, r.body);
  // the accounts and the conversation answered 201 survived too: login works
  const login = await http(srv2, 'POST', '/api/auth/login', { body: { username: b.user.username, password: b.password } });
  assert.equal(login.status, 200, login.text);
});
