// sync amplification (issue 8, item 2): one conversation has one key ("1", never "01", " 1" or
// "+1"), an answer holds at most 200 messages of a conversation and 1000 in all, and a large
// answer is produced as the client reads it, not queued at once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, signup, createGroup, openSocket, closeAll, sendMany, collectUntil, uniq, postMessage,
} from './helpers.mjs';
import { rssOf, sleep } from './abuse.mjs';
import { readFileSync } from 'node:fs';

let srv;
before(async () => {
  srv = await startServer({
    PARLEY_SEND_RATE: '0',
    PARLEY_SEND_BURST: '0',
    PARLEY_WORKERS: '1',
    PARLEY_MAX_BODY: '65536',
    PARLEY_MAX_FRAME: '1048576',
    PARLEY_MAX_HTTP_BODY: '1048576',
    PARLEY_HEARTBEAT_MS: '120000',
  });
});
after(async () => { if (srv) await srv.stop(); });

const msgs = (frames) => frames.filter((f) => f.op === 'msg');

test('sync: only canonical conversation ids count; aliases of one conversation send nothing more', async () => {
  const a = await signup(srv);
  const g = await createGroup(srv, a, []);
  const c = await openSocket(srv, a.token);
  try {
    await sendMany(c, g.id, 5);
    c.take('msg');
    const id = String(g.id);
    // keys that strtoll would read as the same conversation, and junk
    const since = { [id]: 0, [`0${id}`]: 0, [`00${id}`]: 0, [` ${id}`]: 0, [`+${id}`]: 0, [`${id} `]: 0, [`${id}.0`]: 0, '-1': 0, '0': 0, x: 0 };
    c.send({ op: 'sync', since });
    const frames = await collectUntil(c, 'synced');
    assert.deepEqual(msgs(frames).map((m) => m.seq), [1, 2, 3, 4, 5], 'each message once');
    const synced = frames.at(-1);
    assert.deepEqual(synced.conversations.map((x) => x.conv), [g.id]);
    // only an alias: nothing at all
    c.send({ op: 'sync', since: { [`0${id}`]: 0, [`+${id}`]: 0 } });
    const only = await collectUntil(c, 'synced');
    assert.equal(msgs(only).length, 0, 'an alias is not a conversation id');
  } finally { await closeAll(c); }
});

test('sync: at most 200 messages of a conversation and 1000 in all; syncing again gets the rest, exactly once', async () => {
  const a = await signup(srv);
  const c = await openSocket(srv, a.token);
  try {
    const convs = [];
    for (let i = 0; i < 6; i++) {
      const g = await createGroup(srv, a, []);
      convs.push(g.id);
      await sendMany(c, g.id, 201, { prefix: uniq('cap') });
    }
    c.take('msg');
    const held = Object.fromEntries(convs.map((id) => [id, 0]));
    const rounds = [];
    for (let round = 0; round < 5; round++) {
      c.send({ op: 'sync', since: Object.fromEntries(convs.map((id) => [String(id), held[id]])) });
      const frames = await collectUntil(c, 'synced', 20000);
      const got = msgs(frames);
      const per = {};
      rounds.push(per);
      for (const m of got) {
        per[m.conv] = (per[m.conv] || 0) + 1;
        assert.equal(m.seq, held[m.conv] + 1, `conversation ${m.conv}: seq ${m.seq} after ${held[m.conv]}`);
        held[m.conv] = m.seq;
      }
      const synced = frames.at(-1);
      if (synced.conversations.every((x) => held[x.conv] === x.last_seq)) break;
    }
    // in ascending conversation id: the first answer is exactly 200 of each of the first
    // five (1000 in all) and none of the sixth; then the 201st of those five and 200 of the
    // sixth; then the sixth's last
    const [c1, c2, c3, c4, c5, c6] = [...convs].sort((p, q) => p - q);
    assert.deepEqual(rounds, [
      { [c1]: 200, [c2]: 200, [c3]: 200, [c4]: 200, [c5]: 200 },
      { [c1]: 1, [c2]: 1, [c3]: 1, [c4]: 1, [c5]: 1, [c6]: 200 },
      { [c6]: 1 },
    ], 'answers of exactly 200 per conversation and 1000 in all, then the rest');
    for (const id of convs) assert.equal(held[id], 201);
  } finally { await closeAll(c); }
});

test('sync: a large answer is produced as the client reads it (bounded memory, not closed as a slow consumer)', async () => {
  const a = await signup(srv);
  const g = await createGroup(srv, a, []);
  const N = 100;
  // 60 KB bodies of control characters: ~360 KB each once JSON-escaped, 36 MB for the answer
  const body = '\u0001'.repeat(60000);
  for (let i = 0; i < N; i += 20) {
    await Promise.all([...Array(20)].map((_, k) => postMessage(srv, a, g.id, body, `big-${i + k}`)));
  }
  const c = await openSocket(srv, a.token);
  try {
    const base = rssOf(srv.child.pid);
    c.ws._socket.pause();
    c.send({ op: 'sync', since: { [String(g.id)]: 0 } });
    // the kernel buffers fill; the server must not queue the rest of the 36 MB
    const port = c.ws._socket.localPort;
    await serverStuck(srv.port, port);
    const grown = rssOf(srv.child.pid) - base;
    assert.ok(grown < 48 * (1 << 20), `the server grew by ${(grown / (1 << 20)).toFixed(1)} MB for one sync`);
    c.ws._socket.resume();
    const frames = await collectUntil(c, 'synced', 60000);
    assert.deepEqual(msgs(frames).map((m) => m.seq), [...Array(N)].map((_, i) => i + 1));
    assert.ok(c.isOpen, 'not closed as a slow consumer');
    await c.roundtrip();
  } finally { await closeAll(c); }
});

// Resolves once the server's side of the connection has unsent bytes that do not move (the
// client's receive window is full): from /proc/net/tcp's tx_queue.
async function serverStuck(serverPort, clientPort, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  let last = -1;
  let since = Date.now();
  for (;;) {
    let q = null;
    for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 5) continue;
      if (parseInt(f[1].split(':')[1], 16) === serverPort && parseInt(f[2].split(':')[1], 16) === clientPort) {
        q = parseInt(f[4].split(':')[0], 16);
      }
    }
    if (q !== last) { last = q; since = Date.now(); }
    if (q > 0 && Date.now() - since >= 600) return;
    if (Date.now() > until) throw new Error(`the server's send queue did not fill (${q})`);
    await sleep(50);
  }
}
