// The cluster, tested against itself: real Redis (two servers: conversations on both
// shards), a real PostgreSQL primary and streaming replica, three parleyd nodes and HAProxy,
// all started by scripts/cluster (make test-cluster starts it, runs this, stops it). Clients
// connect through HAProxy and directly to chosen nodes. The tests run in order; each fault
// test puts the cluster back as it found it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WS from 'ws';
import {
  DIR, cluster, collect, dense, env, frontUrl, nodeUrl, psql, readyz, sleep, uname, user, waitFor,
} from './helpers.mjs';

let E;
const clients = [];
function track(c) { clients.push(c); return c; }

before(() => { E = env(); });
after(() => { for (const c of clients) { try { c.destroy(); } catch { /* gone */ } } });

async function on(n, prefix) { return track(await user(nodeUrl(E, n), prefix)); }
async function front(prefix) { return track(await user(frontUrl(E), prefix)); }

// A raw WebSocket watcher: every msg frame as the server sent it (no SDK de-duplication).
async function rawWatcher(url, token) {
  const ws = new WS(url.replace('http', 'ws') + '/ws');
  const frames = [];
  await new Promise((resolve, reject) => {
    ws.on('open', () => ws.send(JSON.stringify({ op: 'auth', token })));
    ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      if (f.op === 'hello') resolve();
      frames.push(f);
    });
    ws.on('error', reject);
    setTimeout(() => reject(new Error('raw watcher: no hello')), 10000);
  });
  return { ws, frames, msgs: (conv) => frames.filter((f) => f.op === 'msg' && f.conv === conv).map((f) => f.seq) };
}

// Every acked seq arrived exactly once, in order, and nothing else (the SDK's view).
function assertComplete(col, conv, acked, who) {
  const got = col.seqs(conv);
  const want = [...acked].sort((a, b) => a - b);
  assert.ok(dense(want, want.length), `${who}: acked seqs are dense (${want.length})`);
  assert.deepEqual(got.slice(0, want.length), want, `${who}: every acked message once, in order`);
}

// What a member lacks of the acked messages, and where its client stands: for a timeout's message.
function missing(col, conv, acked, cl) {
  const got = new Set(col.seqs(conv));
  const lack = [...acked].filter((x) => !got.has(x)).sort((a, b) => a - b);
  return `missing ${lack.length} (${lack.slice(0, 20).join(',')}), has ${got.size}, ` +
    `max acked ${Math.max(0, ...acked)}, cursor ${cl.cursor(conv)}, state ${cl.state}, ` +
    `first seqs ${col.seqs(conv).slice(0, 5).join(',')}; events ${JSON.stringify((cl.seen || []).slice(0, 20))}`;
}

// Keeps a client's gap and error events (cl.seen), for missing()'s report.
function watchGaps(cl) {
  cl.seen = [];
  const t0 = Date.now();
  cl.on('gap', (g) => cl.seen.push({ t: Date.now() - t0, gap: g }));
  cl.on('error', (e) => cl.seen.push({ t: Date.now() - t0, error: String(e && e.message) }));
  cl.on('conversation', (c) => cl.seen.push({ t: Date.now() - t0, conversation: c.id, last_seq: c.last_seq }));
  cl.on('connected', () => cl.seen.push({ t: Date.now() - t0, connected: 1 }));
  cl.on('disconnected', () => cl.seen.push({ t: Date.now() - t0, disconnected: 1 }));
  cl.on('synced', (x) => cl.seen.push({ t: Date.now() - t0, synced: x.conversations.map((c) => [c.conv, c.last_seq]) }));
  cl.on('message', (m) => { if (m.seq < 8) cl.seen.push({ t: Date.now() - t0, msg: m.seq }); });
  return cl;
}

test('users on different nodes exchange direct and group messages live, and typing crosses nodes', async () => {
  const a = await on(1, 'a'), b = await on(2, 'b'), c = await on(3, 'c');
  const ca = collect(a), cb = collect(b), cc = collect(c);
  const d = await a.createDirect(b.user.id);
  await a.send(d.id, 'hello from node 1');
  await waitFor(() => cb.bodies(d.id).includes('hello from node 1'), 10000, 'B gets A');
  await b.send(d.id, 'hello back from node 2');
  await waitFor(() => ca.bodies(d.id).includes('hello back from node 2'), 10000, 'A gets B');

  const g = await a.createGroup('three nodes', [b.user.id, c.user.id]);
  await waitFor(async () => (await c.conversations()).some((x) => x.id === g.id), 10000, 'C sees the group');
  for (const [who, cl] of [['a', a], ['b', b], ['c', c]]) await cl.send(g.id, `from ${who}`);
  for (const col of [ca, cb, cc]) {
    await waitFor(() => col.seqs(g.id).length === 3, 10000, 'all three messages everywhere');
    assert.deepEqual(col.seqs(g.id), [1, 2, 3]);
  }

  const typing = [];
  b.on('typing', (t) => typing.push(t));
  a.typing(d.id);
  await waitFor(() => typing.some((t) => t.conv === d.id && t.user === a.user.id), 10000, 'typing from node 1 at node 2');

  // presence across nodes: B (node 2) learns A (node 1) is online, and that A left
  const online = new Map();
  b.on('presence', (p) => online.set(p.user, p.online));
  const found = (await b.searchUsers(a.user.username)).find((u) => u.id === a.user.id);
  assert.equal(found.online, true, 'node 2 knows a user of node 1 is online');
  a.disconnect();
  await waitFor(() => online.get(a.user.id) === false, 10000, 'A offline, seen at node 2');
  const gone = (await c.searchUsers(a.user.username)).find((u) => u.id === a.user.id);
  assert.equal(gone.online, false, 'node 3 knows A is offline');
  a.connect();
  await waitFor(() => online.get(a.user.id) === true, 10000, 'A online again, seen at node 2');
});

test('three nodes send concurrently into one group: dense seqs, no duplicates, every member sees all in order', async () => {
  const s = [await on(1, 's'), await on(2, 's'), await on(3, 's')];
  const g = await s[0].createGroup('concurrent', [s[1].user.id, s[2].user.id]);
  await waitFor(async () => (await s[2].conversations()).some((x) => x.id === g.id), 10000, 'group everywhere');
  const watchers = [];
  for (let n = 1; n <= 3; n++) watchers.push(await rawWatcher(nodeUrl(E, n), s[n - 1].session.access_token));
  const N = 100;
  const acks = await Promise.all(s.flatMap((cl, k) => Array.from({ length: N }, (_, i) => cl.send(g.id, `n${k + 1}-${i}`))));
  const seqs = acks.map((x) => x.seq).sort((a, b) => a - b);
  assert.ok(dense(seqs, 3 * N), 'the acks carry 1..300, each once');
  for (const w of watchers) {
    await waitFor(() => w.msgs(g.id).length >= 3 * N, 20000, 'every message at every node');
    assert.ok(dense(w.msgs(g.id), 3 * N), 'raw frames: 1..300 once each, in order');
    w.ws.close();
  }
});

// Sends ops on a raw watcher's socket and resolves with each op's answer (ack or error).
function rawOps(w, ops) {
  return Promise.all(ops.map((op) => new Promise((resolve, reject) => {
    const start = w.frames.length;
    w.ws.send(JSON.stringify(op));
    const t0 = Date.now();
    const look = () => {
      const f = w.frames.slice(start).find((x) => (x.op === 'ack' || x.op === 'error') && x.id === op.id);
      if (f) return resolve(f);
      if (Date.now() - t0 > 20000) return reject(new Error(`no answer to ${op.id}`));
      setTimeout(look, 10);
    };
    look();
  })));
}

test('three nodes change messages of one group concurrently: dense mods, every member gets every update once, in mod order', async () => {
  const s = [await on(1, 'm'), await on(2, 'm'), await on(3, 'm')];
  const g = await s[0].createGroup('changes', [s[1].user.id, s[2].user.id]);
  await waitFor(async () => (await s[2].conversations()).some((x) => x.id === g.id), 10000, 'group everywhere');
  const watchers = [];
  for (let n = 1; n <= 3; n++) watchers.push(await rawWatcher(nodeUrl(E, n), s[n - 1].session.access_token));
  const own = [];
  for (let k = 0; k < 3; k++) own.push((await s[k].send(g.id, `mine ${k}`)).seq);
  // each node: its user edits its own message and toggles a reaction on the first, 20 changes each
  const N = 20;
  const answers = await Promise.all(watchers.map((w, k) => rawOps(w, Array.from({ length: N }, (_, i) => (
    i % 2 === 0
      ? { op: 'edit', id: `e${k}-${i}`, conv: g.id, seq: own[k], body: `edit ${k}.${i}` }
      : { op: 'react', id: `r${k}-${i}`, conv: g.id, seq: own[0], emoji: `k${k}`, on: i % 4 === 1 }
  )))));
  const mods = answers.flat().map((a) => {
    assert.equal(a.op, 'ack', JSON.stringify(a));
    return a.mod;
  }).sort((a, b) => a - b);
  assert.ok(dense(mods, 3 * N), `the acks carry mods 1..${3 * N}, each once`);
  for (const w of watchers) {
    const updates = () => w.frames.filter((f) => f.op === 'update' && f.conv === g.id);
    await waitFor(() => updates().length >= 3 * N, 20000, 'every update at every node');
    assert.ok(dense(updates().map((u) => u.mod), 3 * N), 'update frames: mods 1..60 once each, in mod order');
    const last = updates().filter((u) => u.seq === own[1]).pop();
    assert.equal(last.message.body, `edit 1.${N - 2}`, 'the last update of a message holds its final text');
    w.ws.close();
  }
  const after = (await s[2].history(g.id)).messages;
  assert.equal(after.find((m) => m.seq === own[2]).body, `edit 2.${N - 2}`, 'history has the final text');
});

test('kill -9 a node while its clients send through HAProxy: they reconnect, resend and sync; nothing lost or doubled', async () => {
  // clients through HAProxy (leastconn spreads them over the nodes), plus one member per node
  const senders = [];
  for (let i = 0; i < 6; i++) senders.push(await front('k'));
  const g = await senders[0].createGroup('killed', senders.slice(1).map((x) => x.user.id));
  const cols = senders.map((x) => collect(x));
  await waitFor(async () => (await senders[5].conversations()).some((x) => x.id === g.id), 10000, 'group everywhere');
  const acked = new Set();
  let stop = false;
  const loops = senders.map(async (cl, k) => {
    for (let i = 0; !stop; i++) {
      try { acked.add((await cl.send(g.id, `k${k}-${i}`)).seq); } catch { /* refused: not acked */ }
      await sleep(20);
    }
  });
  await sleep(1000);
  cluster('kill-node', 2);
  await sleep(2500);
  stop = true;
  await Promise.all(loops);
  try {
    for (let k = 0; k < senders.length; k++) {
      await waitFor(() => senders[k].pending(g.id).length === 0 && senders[k].state === 'online', 30000, `sender ${k} settled`);
    }
    const total = acked.size;
    assert.ok(total > 20, `messages were acked (${total})`);
    for (let k = 0; k < senders.length; k++) {
      await waitFor(() => cols[k].seqs(g.id).length >= total, 20000, `member ${k} has all ${total}`)
        .catch((e) => { throw new Error(`${e.message}: ${missing(cols[k], g.id, acked, senders[k])}`); });
      assertComplete(cols[k], g.id, acked, `member ${k}`);
    }
  } finally {
    cluster('start-node', 2);
  }
});

test('Redis killed for 2 s while messages flow: delivery resumes, gaps are repaired, nothing lost', async () => {
  const a = await on(1, 'r'), b = await on(2, 'r'), c = await on(3, 'r');
  const g = await a.createGroup('redis down', [b.user.id, c.user.id]);
  await waitFor(async () => (await c.conversations()).some((x) => x.id === g.id), 10000, 'group everywhere');
  const cols = [collect(a), collect(b), collect(c)];
  const acked = new Set();
  let stop = false;
  const loops = [a, b, c].map(async (cl, k) => {
    for (let i = 0; !stop; i++) {
      try { acked.add((await cl.send(g.id, `r${k}-${i}`)).seq); } catch { /* not acked */ }
      await sleep(25);
    }
  });
  await sleep(500);
  cluster('kill-redis', 1);
  cluster('kill-redis', 2);
  await sleep(2000);
  cluster('start-redis', 1);
  cluster('start-redis', 2);
  await waitFor(async () => (await readyz(nodeUrl(E, 1))) === 200 && (await readyz(nodeUrl(E, 2))) === 200 && (await readyz(nodeUrl(E, 3))) === 200, 20000, 'nodes ready again');
  await sleep(500);
  stop = true;
  await Promise.all(loops);
  const total = acked.size;
  assert.ok(total > 30, `messages were acked during the outage too (${total})`);
  for (let k = 0; k < 3; k++) {
    await waitFor(() => cols[k].seqs(g.id).length >= total, 30000, `member ${k} has all ${total}`)
      .catch((e) => { throw new Error(`${e.message}: ${missing(cols[k], g.id, acked, [a, b, c][k])}`); });
    assertComplete(cols[k], g.id, acked, `member ${k}`);
  }
});

test('replica replay paused: a client that reconnects still gets everything (the primary answers)', async () => {
  const a = await on(1, 'p'), b = await on(3, 'p');
  const cb = collect(b);
  const evs = [];
  for (const ev of ['conversation', 'gap', 'synced', 'disconnected', 'connected', 'error']) b.on(ev, (x) => evs.push([ev, Date.now(), JSON.stringify(x).slice(0, 120)]));
  const d = await a.createDirect(b.user.id);
  const ack0 = await a.send(d.id, 'before the pause');
  try {
    await waitFor(() => cb.seqs(d.id).length === 1, 10000, 'first message');
  } catch (e) {
    throw new Error(`${e.message}: conv ${d.id} ack ${JSON.stringify(ack0)} b state ${b.state} events ${JSON.stringify(evs)}`);
  }
  psql(E, 'replica', 'SELECT pg_wal_replay_pause()');
  try {
    b.disconnect();
    for (let i = 0; i < 5; i++) await a.send(d.id, `while paused ${i}`);
    b.connect();
    await waitFor(() => cb.seqs(d.id).length === 6, 15000, 'the five messages after reconnecting');
    assert.deepEqual(cb.seqs(d.id), [1, 2, 3, 4, 5, 6]);
    const page = await b.history(d.id, { after: 0 });
    assert.equal(page.messages.length, 6, 'history read forward is complete too');
  } finally {
    psql(E, 'replica', 'SELECT pg_wal_replay_resume()');
  }
});

function replicaScans() {
  return Number(psql(E, 'replica', "SELECT coalesce(sum(idx_scan + seq_scan), 0) FROM pg_stat_user_tables WHERE relname IN ('messages', 'members', 'conversations')"));
}

test('history and lists are really served by the replica; stopped, the primary serves; started, reads return to it', async () => {
  const a = await on(1, 'h'), b = await on(2, 'h');
  const d = await a.createDirect(b.user.id);
  for (let i = 0; i < 3; i++) await a.send(d.id, `h${i}`);
  await sleep(300); // let the replica replay
  const before = replicaScans();
  for (let i = 0; i < 20; i++) await b.history(d.id, { limit: 10 });
  await waitFor(() => replicaScans() > before, 5000, 'replica statistics move');

  cluster('stop-replica');
  try {
    const page = await b.history(d.id, { limit: 10 });
    assert.equal(page.messages.length, 3, 'history with the replica down');
    await a.send(d.id, 'replica down');
    b.disconnect();
    b.connect();
    await waitFor(() => b.state === 'online', 10000, 'reconnected');
    const list = await b.conversations();
    assert.ok(list.some((x) => x.id === d.id && x.last_seq === 4), 'conversation list from the primary');
  } finally {
    cluster('start-replica');
  }
  await sleep(1500); // the pool tries the replica again after a second
  await waitFor(async () => {
    const s0 = replicaScans();
    await b.history(d.id, { limit: 10 });
    return replicaScans() > s0;
  }, 20000, 'reads back on the replica');
});

test('PostgreSQL primary restarted under load: sends in the outage are refused "unavailable", none acked is lost, service resumes', async () => {
  const a = await on(1, 'q'), b = await on(2, 'q');
  const g = await a.createGroup('primary down', [b.user.id]);
  await waitFor(async () => (await b.conversations()).some((x) => x.id === g.id), 10000, 'group everywhere');
  const cb = collect(b);
  const acked = new Set();
  let stop = false;
  const loop = (async () => {
    for (let i = 0; !stop; i++) {
      try { acked.add((await a.send(g.id, `q${i}`)).seq); } catch { /* refused */ }
      await sleep(20);
    }
  })();
  await sleep(500);
  // a raw socket, open before the outage: its send in the outage is answered
  // unavailable, with its id
  const raw = new WS(nodeUrl(E, 3).replace('http', 'ws') + '/ws');
  const errors = [];
  await new Promise((resolve, reject) => {
    raw.on('open', () => raw.send(JSON.stringify({ op: 'auth', token: a.session.access_token })));
    raw.on('message', (m) => {
      const f = JSON.parse(m.toString());
      if (f.op === 'hello') resolve();
      if (f.op === 'error') errors.push(f);
    });
    raw.on('error', reject);
  });
  cluster('stop-primary');
  let sawUnavailable = false;
  try {
    const id = uname('x');
    raw.send(JSON.stringify({ op: 'send', id, conv: g.id, body: 'in the outage' }));
    await waitFor(() => errors.some((f) => f.id === id), 15000, 'an answer to the send in the outage');
    sawUnavailable = errors.some((f) => f.code === 'unavailable' && f.id === id);
    await waitFor(async () => (await readyz(nodeUrl(E, 1))) === 503, 5000, '/readyz fails while the primary is down');
  } finally {
    raw.close();
    cluster('start-primary');
  }
  assert.ok(sawUnavailable, 'a send in the outage got unavailable');
  await waitFor(async () => (await readyz(nodeUrl(E, 1))) === 200, 20000, 'ready again');
  await sleep(1000);
  stop = true;
  await loop;
  await waitFor(() => a.pending(g.id).length === 0, 30000, 'every send settled');
  const total = acked.size;
  assert.ok(total > 10, `messages acked (${total})`);
  await waitFor(() => cb.seqs(g.id).length >= total, 20000, 'the other member has all');
  assertComplete(cb, g.id, acked, 'member b');
});

test('two Redis servers: conversations on both shards, delivery across nodes on both', async () => {
  assert.ok(E.redis_url.includes(','), 'the cluster runs with two Redis servers');
  const a = await on(1, 't'), b = await on(3, 't');
  const cb = collect(b);
  const convs = [];
  for (let i = 0; i < 6; i++) {
    const g = await a.createGroup(`shard ${i}`, [b.user.id]);
    convs.push(g.id);
  }
  for (const conv of convs) await a.send(conv, `to ${conv}`);
  for (const conv of convs) await waitFor(() => cb.seqs(conv).length === 1, 10000, `conversation ${conv} delivered`);
  // both Redis servers carry conversation channels
  const { execFileSync } = await import('node:child_process');
  for (const p of [E.redis_port_1, E.redis_port_2]) {
    const chans = execFileSync('redis-cli', ['-p', String(p), 'PUBSUB', 'CHANNELS', '*'], { encoding: 'utf8' });
    assert.ok(chans.split('\n').filter((x) => x.trim()).length > 1, `Redis on ${p} has conversation channels`);
  }
});

// Every Redis server of the cluster paused for ms (CLIENT PAUSE ALL): publications wait in
// Redis, while each node still delivers what it commits to its own clients at once.
function pauseRedis(ms) {
  for (const p of [E.redis_port_1, E.redis_port_2].filter(Boolean)) {
    const r = spawnSync('redis-cli', ['-p', String(p), 'CLIENT', 'PAUSE', String(ms), 'ALL'], { encoding: 'utf8' });
    assert.equal(r.stdout.trim(), 'OK', `CLIENT PAUSE on ${p}: ${r.stdout}${r.stderr}`);
  }
}

// The race behind a lost first message: the group's push comes from node 1 through Redis;
// a message sent on node 3 reaches node 3's clients at once. The member on node 3 must
// still hear of the conversation first, and then get every message from seq 1.
test('a new group\'s push slower than a message committed on the member\'s own node: the member gets the push first, then every message from the first, in order', async () => {
  const a = await on(1, 'w'), b = await on(3, 'w'), c = await on(3, 'w');
  const seen = [];
  b.on('conversation', (x) => seen.push(`conversation ${x.last_seq}`));
  b.on('message', (m) => seen.push(`msg ${m.seq}`));
  pauseRedis(1500);
  const g = await a.createGroup('slow push', [b.user.id, c.user.id]);
  assert.equal((await a.send(g.id, 'one, from node 1')).seq, 1);
  assert.equal((await c.send(g.id, 'two, from node 3')).seq, 2);
  await waitFor(() => seen.includes('msg 2') && seen.some((x) => x.startsWith('conversation')), 15000, 'the push and message 2 at b');
  await sleep(300);
  assert.deepEqual(seen, ['conversation 0', 'msg 1', 'msg 2']);
});

test('a push that never comes in time (Redis paused longer than the wait): the messages are delivered anyway, and the node logs it', async () => {
  const a = await on(1, 'v'), b = await on(3, 'v'), c = await on(3, 'v');
  const cb = collect(b);
  let pushed = false;
  b.on('conversation', () => { pushed = true; });
  const log = path.join(DIR, 'node-3.log');
  const before = fs.readFileSync(log, 'utf8').split('no push in').length;
  const learned = fs.readFileSync(log, 'utf8').split('memberships learned from the database').length;
  pauseRedis(6000);
  const g = await a.createGroup('no push', [b.user.id, c.user.id]);
  await c.send(g.id, 'from node 3, while Redis is paused');
  // released by the wait running out (2 s), not by the push: Redis is still paused
  await waitFor(() => cb.seqs(g.id).length === 1, 5000, 'the message at b without its push');
  assert.equal(pushed, false, 'the push had not come');
  const text = fs.readFileSync(log, 'utf8');
  assert.ok(text.split('no push in').length > before, 'node 3 logged the wait that ran out');
  // and asked the database instead: b is in the group
  await waitFor(() => fs.readFileSync(log, 'utf8').split('memberships learned from the database').length > learned,
    5000, 'node 3 learned the membership from the database');
  // Redis back: the push arrives late and changes nothing delivered
  await waitFor(() => pushed, 15000, 'the late push at b');
  await sleep(500);
  assert.deepEqual(cb.seqs(g.id), [1]);
  // and the conversation works as any other: a message from node 1 arrives, once
  await a.send(g.id, 'from node 1, after');
  await waitFor(() => cb.seqs(g.id).length === 2, 10000, 'the next message at b');
  await sleep(300);
  assert.deepEqual(cb.seqs(g.id), [1, 2]);
});

// Every node's /metrics, scraped while the cluster changes: each counter only goes up for the
// life of a node's process (a restarted node starts again from zero).
function metricsWatch(nodes) {
  const last = new Map(); // node -> Map(sample -> value)
  const problems = [];
  let stop = false;
  const parse = (text) => {
    const v = new Map();
    for (const line of text.split('\n')) {
      const m = /^([a-z_]+_total)(\{(?:[^"}]|"[^"]*")*\})? ([0-9.e+]+)$/.exec(line);
      if (m) v.set(m[1] + (m[2] || ''), Number(m[3]));
    }
    return v;
  };
  const loop = (async () => {
    while (!stop) {
      for (const n of nodes()) {
        try {
          const r = await fetch(`${nodeUrl(E, n)}/metrics`, { signal: AbortSignal.timeout(1000) });
          if (r.status !== 200) continue;
          const v = parse(await r.text());
          const prev = last.get(n);
          if (prev) {
            for (const [k, x] of v) if (prev.has(k) && x < prev.get(k)) problems.push(`node ${n}: ${k} ${prev.get(k)} -> ${x}`);
          }
          last.set(n, v);
        } catch { /* draining or down */ }
      }
      await sleep(300);
    }
  })();
  return {
    restarted(n) { last.delete(n); },
    scraped: () => last.size,
    async end() { stop = true; await loop; return problems; },
  };
}

test('rolling restart of every node, then a fourth node added through HAProxy and one removed, under load: nothing lost, doubled or out of order', async () => {
  const senders = [];
  for (let i = 0; i < 6; i++) senders.push(watchGaps(await front('roll')));
  const g = await senders[0].createGroup('rolling', senders.slice(1).map((x) => x.user.id));
  await waitFor(async () => (await senders[5].conversations()).some((x) => x.id === g.id), 10000, 'group everywhere');
  const cols = senders.map((x) => collect(x));
  const gaps = senders.map(() => []); // per client: offline durations, ms
  senders.forEach((cl, k) => {
    let since = 0;
    cl.on('disconnected', () => { since = Date.now(); });
    cl.on('connected', () => { if (since) gaps[k].push(Date.now() - since); since = 0; });
  });
  let live = [1, 2, 3];
  const watch = metricsWatch(() => live);
  const acked = new Set();
  let stop = false;
  const loops = senders.map(async (cl, k) => {
    for (let i = 0; !stop; i++) {
      try { acked.add((await cl.send(g.id, `roll${k}-${i}`)).seq); } catch { /* not acked */ }
      await sleep(30);
    }
  });
  await sleep(800);
  // rolling deploy: each node drained (SIGTERM: not ready, 1001 closes spread), started again
  for (const n of [1, 2, 3]) {
    cluster('stop-node', n);
    watch.restarted(n);
    cluster('start-node', n);
    await waitFor(async () => (await readyz(nodeUrl(E, n))) === 200, 20000, `node ${n} back`);
    await sleep(1500); // HAProxy's checks (rise 2, every second) take it back
  }
  // scale out: a fourth node, added on HAProxy's runtime API
  cluster('start-node', 4);
  live = [1, 2, 3, 4];
  cluster('haproxy', `add server nodes/node4 127.0.0.1:${E.port + 4} check inter 1s fall 2 rise 2`);
  cluster('haproxy', 'enable health nodes/node4');
  cluster('haproxy', 'enable server nodes/node4');
  await waitFor(() => /node4[^\n]* UP/.test(cluster('haproxy', 'show servers state nodes')) ||
    cluster('haproxy', 'show stat').split('\n').some((l) => l.startsWith('nodes,node4,') && l.includes(',UP,')), 15000, 'node 4 up in HAProxy');
  await sleep(1000);
  // scale in: node 1 drained out of HAProxy, stopped, deleted
  cluster('haproxy', 'set server nodes/node1 state drain');
  cluster('stop-node', 1);
  live = [2, 3, 4];
  cluster('haproxy', 'set server nodes/node1 state maint');
  cluster('haproxy', 'del server nodes/node1');
  await sleep(1500);
  stop = true;
  await Promise.all(loops);
  try {
    for (let k = 0; k < senders.length; k++) {
      await waitFor(() => senders[k].pending(g.id).length === 0 && senders[k].state === 'online', 30000, `sender ${k} settled`);
    }
    const total = acked.size;
    assert.ok(total > 50, `messages acked through it all (${total})`);
    for (let k = 0; k < senders.length; k++) {
      await waitFor(() => cols[k].seqs(g.id).length >= total, 20000, `member ${k} has all ${total}`)
        .catch((e) => { throw new Error(`${e.message}: ${missing(cols[k], g.id, acked, senders[k])}`); });
      assertComplete(cols[k], g.id, acked, `member ${k}`);
    }
    // the drain window (1 s + 2 s in make test-cluster) plus the SDK's backoff (at most 1 s), with room
    const worst = Math.max(0, ...gaps.flat());
    assert.ok(worst < 8000, `no client offline longer than the drain window plus its backoff (worst ${worst} ms)`);
    const problems = await watch.end();
    assert.ok(watch.scraped() >= 3, 'the nodes were scraped');
    assert.deepEqual(problems, [], 'counters only go up');
  } finally {
    await watch.end();
    // put the cluster back as the other tests expect it: nodes 1-3 behind HAProxy
    cluster('stop-node', 4);
    cluster('start-node', 1);
    cluster('haproxy', `add server nodes/node1 127.0.0.1:${E.port + 1} check inter 1s fall 2 rise 2`);
    cluster('haproxy', 'enable health nodes/node1');
    cluster('haproxy', 'enable server nodes/node1');
  }
});
