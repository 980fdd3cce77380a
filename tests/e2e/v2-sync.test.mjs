// Version 2: `mod` is dense per conversation under concurrent changes from several users, and
// `sync` with `mods` repairs what a client missed while offline: its msg frames, then update
// frames in mod order (at most 200 per conversation), then synced with last_mod. A version-1
// client (no `mods`) keeps working and gets no update frame in a sync answer.
// On SQLite by default, on PostgreSQL with PARLEY_E2E_PG_URL (v2-helpers.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  signupMany, createGroup, getConv, openSocket, closeAll, sendMany, collectUntil, uniq,
} from './helpers.mjs';
import {
  startV2Server, edit, del, react, okAck, changes, history, assertUpdate, updatesUntil,
} from './v2-helpers.mjs';

let srv;
let users;
before(async () => {
  srv = await startV2Server({ PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0' });
  users = await signupMany(srv, 6, 'v2sync');
});
after(async () => { if (srv) await srv.stop(); });

// 40 distinct emoji
const EMOJI = ['👍', '👎', '😀', '😂', '😍', '🎉', '🔥', '👀', '✅', '❌', '💯', '🙏', '🤔', '😢', '😮', '🚀', '⭐', '❤️', '🍕', '☕',
  '🐱', '🐶', '🌈', '🍺', '🎸', '📌', '💡', '🔔', '🏆', '🧠', '👋', '👏', '🤝', '💪', '🙌', '😎', '🥳', '😴', '🤯', '🍀'];
const range = (n, from = 1) => Array.from({ length: n }, (_, i) => i + from);

test('mod is dense under concurrent changes: 5 users x 40 changes in parallel take mods 1..200 once each', async () => {
  const five = users.slice(0, 5);
  const watcherUser = users[5];
  const g = await createGroup(srv, five[0], [...five.slice(1), watcherUser].map((u) => u.user.id));
  const conns = await Promise.all(five.map((u) => openSocket(srv, u.token)));
  const watcher = await openSocket(srv, watcherUser.token);
  try {
    // each user owns 10 messages: 50 in all
    const own = [];
    for (const k of conns) own.push((await sendMany(k, g.id, 10)).map((a) => a.seq));
    for (const k of [...conns, watcher]) { await k.roundtrip(); k.take('msg'); }
    // user u: 10 edits of its own messages, 30 reactions, each a real change (a distinct
    // (user, message, emoji) triple), all sent at once on its connection; 5 connections at once
    const all = conns.map((k, u) => {
      const ps = [];
      for (let i = 0; i < 40; i++) {
        if (i % 4 === 0) ps.push(edit(k, g.id, own[u][i / 4], `edit ${u}/${i}`));
        else ps.push(react(k, g.id, own[(u + i) % 5][i % 10], EMOJI[i], true));
      }
      return Promise.all(ps.map((p) => okAck(p, `user ${u}`)));
    });
    const acks = (await Promise.all(all)).flat();
    assert.equal(acks.length, 200);
    const mods = acks.map((a) => a.mod).sort((p, q) => p - q);
    assert.deepEqual(mods, range(200), 'every mod 1..200 exactly once, no gap, no reuse');
    for (const a of acks) assert.equal(a.conv, g.id);

    // every connection sees 200 update frames in increasing mod order
    for (const [k, who] of [[watcher, 'watcher'], [conns[0], 'user 0'], [conns[4], 'user 4']]) {
      const ups = await updatesUntil(k, g.id, 200, 10000);
      assert.deepEqual(ups.map((u) => u.mod), range(200), `${who}: update frames 1..200 in order`);
      ups.forEach((u) => assertUpdate(u, who));
    }
    assert.equal((await getConv(srv, watcherUser, g.id)).last_mod, 200);
    // the final state: each message's mod is the largest mod of an ack on it
    const last = new Map();
    for (const a of acks) last.set(a.seq, Math.max(last.get(a.seq) || 0, a.mod));
    const msgs = await history(srv, watcherUser, g.id);
    for (const m of msgs) assert.equal(m.mod, last.get(m.seq), `message ${m.seq}`);
    const ch = await changes(srv, watcherUser, g.id, 0, 200);
    assert.equal(ch.body.last_mod, 200);
    assert.deepEqual(ch.body.messages.map((m) => m.mod), [...last.values()].sort((p, q) => p - q));
  } finally { await closeAll(conns, watcher); }
});

test('sync with mods after being offline: msg frames, then update frames in mod order, then synced with last_mod', async () => {
  const [a, b] = users;
  const g = await createGroup(srv, a, [b.user.id]);
  const g2 = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  let cb = await openSocket(srv, b.token);
  try {
    await sendMany(ca, g.id, 5);
    await okAck(react(ca, g.id, 1, '👍'));
    await okAck(edit(ca, g.id, 2, 'seen live'));
    await updatesUntil(cb, g.id, 2);
    const heldSeq = 5;
    const heldMod = 2;
    await cb.close();

    // while b is offline: 3 new messages, and changes to old and new ones
    await sendMany(ca, g.id, 3);
    await okAck(edit(ca, g.id, 1, 'changed while away'));     // mod 3
    await okAck(react(ca, g.id, 6, '🎉'));                      // mod 4 (a new message)
    await okAck(del(ca, g.id, 3));                              // mod 5
    await okAck(react(ca, g.id, 1, '🔥'));                      // mod 6: message 1 again
    await okAck(edit(ca, g.id, 2, 'seen live, then edited'));   // mod 7
    await sendMany(ca, g2.id, 1);
    await okAck(react(ca, g2.id, 1, '👀'));                     // g2 mod 1

    cb = await openSocket(srv, b.token);
    cb.send({ op: 'sync', since: { [g.id]: heldSeq }, mods: { [g.id]: heldMod } });
    const frames = (await collectUntil(cb, 'synced')).filter((f) => ['msg', 'update', 'synced'].includes(f.op));
    const kinds = frames.map((f) => f.op);
    const firstUpdate = kinds.indexOf('update');
    assert.ok(firstUpdate > 0, `update frames come: ${kinds.join(' ')}`);
    assert.ok(kinds.slice(0, firstUpdate).every((k) => k === 'msg'), `msg frames first: ${kinds.join(' ')}`);
    assert.ok(kinds.slice(firstUpdate, -1).every((k) => k === 'update'), `then update frames: ${kinds.join(' ')}`);
    assert.deepEqual(frames.filter((f) => f.op === 'msg').map((m) => m.seq), [6, 7, 8]);
    const ups = frames.filter((f) => f.op === 'update');
    ups.forEach((u) => assertUpdate(u, 'sync update'));
    assert.ok(ups.every((u) => u.conv === g.id), 'no update for a conversation absent from mods');
    // one update per message changed after mod 2, in the order of its current mod
    assert.deepEqual(ups.map((u) => [u.seq, u.mod]), [[6, 4], [3, 5], [1, 6], [2, 7]]);
    const m1 = ups.find((u) => u.seq === 1).message;
    assert.equal(m1.body, 'changed while away');
    assert.deepEqual(m1.reactions, { '👍': [a.user.id], '🔥': [a.user.id] });
    assert.equal(ups.find((u) => u.seq === 3).message.deleted, true);
    const synced = frames.at(-1);
    const e = synced.conversations.find((k) => k.conv === g.id);
    assert.equal(e.last_seq, 8);
    assert.equal(e.last_mod, 7, 'synced entries carry last_mod');
    assert.equal(synced.conversations.find((k) => k.conv === g2.id).last_mod, 1, 'for every conversation');

    // holding everything: nothing more
    cb.send({ op: 'sync', since: { [g.id]: 8 }, mods: { [g.id]: 7, [g2.id]: 0 } });
    const again = await collectUntil(cb, 'synced');
    assert.equal(again.filter((f) => f.op === 'msg').length, 0);
    assert.deepEqual(again.filter((f) => f.op === 'update').map((u) => [u.conv, u.seq, u.mod]), [[g2.id, 1, 1]], 'g2 from mod 0');
    // mods alone, without since: updates and no msg frames
    cb.send({ op: 'sync', mods: { [g.id]: 6 } });
    const only = await collectUntil(cb, 'synced');
    assert.equal(only.filter((f) => f.op === 'msg').length, 0);
    assert.deepEqual(only.filter((f) => f.op === 'update').map((u) => u.mod), [7]);
  } finally { await closeAll(ca, cb); }
});

test('sync with mods: at most 200 update frames per conversation; syncing again from the last mod gets the rest', async () => {
  const [a, b] = users;
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    await sendMany(ca, g.id, 250);
    const acks = await Promise.all(range(250).map((s) => okAck(react(ca, g.id, s, '👍'))));
    assert.equal(Math.max(...acks.map((k) => k.mod)), 250);
    const cb = await openSocket(srv, b.token);
    try {
      cb.send({ op: 'sync', since: { [g.id]: 250 }, mods: { [g.id]: 10 } });
      const frames = await collectUntil(cb, 'synced', 15000);
      const ups = frames.filter((f) => f.op === 'update');
      assert.deepEqual(ups.map((u) => u.mod), range(200, 11), 'mods 11..210, the oldest first');
      assert.equal(frames.at(-1).conversations.find((k) => k.conv === g.id).last_mod, 250, 'last_mod shows there is more');
      cb.send({ op: 'sync', mods: { [g.id]: 210 } });
      const rest = (await collectUntil(cb, 'synced', 15000)).filter((f) => f.op === 'update');
      assert.deepEqual(rest.map((u) => u.mod), range(40, 211));
    } finally { await closeAll(cb); }
  } finally { await closeAll(ca); }
});

test('a version-1 client (no mods): sync gives msg frames and synced, no update frame; messages show their current state', async () => {
  const [a, b] = users;
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    await sendMany(ca, g.id, 4, { prefix: uniq('v1') });
    await okAck(edit(ca, g.id, 1, 'edited for v1'));
    await okAck(react(ca, g.id, 2, '👍'));
    await okAck(del(ca, g.id, 3));
    const cb = await openSocket(srv, b.token);
    try {
      cb.send({ op: 'sync', since: { [g.id]: 0 } });
      const frames = await collectUntil(cb, 'synced');
      assert.deepEqual(frames.filter((f) => f.op === 'update'), [], 'no update frames without mods');
      const msgs = frames.filter((f) => f.op === 'msg');
      assert.deepEqual(msgs.map((m) => m.seq), [1, 2, 3, 4], 'seqs stay dense: a deleted message keeps its seq');
      assert.equal(msgs[0].body, 'edited for v1', 'a msg frame from sync carries the current body');
      for (const m of msgs) for (const k of ['conv', 'seq', 'from', 'id', 'body', 'ts']) assert.ok(k in m, `msg has ${k}`);
      const e = frames.at(-1).conversations.find((k) => k.conv === g.id);
      assert.equal(e.last_seq, 4);
      assert.equal(e.unread, 4);
      // a v1 sender still sends and gets v1 acks (no mod), and seqs go on densely
      const ack = await cb.sendMsg(g.id, 'plain v1 send');
      assert.equal(ack.op, 'ack');
      assert.equal(ack.seq, 5);
      // sync with since but mods: null is version 1 too
      cb.send({ op: 'sync', since: { [g.id]: 4 }, mods: null });
      const f2 = await collectUntil(cb, 'synced');
      assert.deepEqual(f2.filter((f) => f.op === 'update'), []);
    } finally { await closeAll(cb); }
  } finally { await closeAll(ca); }
});

test('sync mods: conversations the user is not in, and bad keys, are ignored', async () => {
  const [a, b, c] = users;
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  const cc = await openSocket(srv, c.token);
  try {
    await sendMany(ca, g.id, 2);
    await okAck(react(ca, g.id, 1, '👍'));
    await ca.next('update'); // the live one: what comes after the sync below is the sync's
    cc.send({ op: 'sync', since: {}, mods: { [g.id]: 0, [`0${g.id}`]: 0, x: 0 } });
    const frames = await collectUntil(cc, 'synced');
    assert.deepEqual(frames.filter((f) => f.op === 'update'), [], 'nothing from a conversation c is not in');
    ca.send({ op: 'sync', mods: { [`0${g.id}`]: 0, [`+${g.id}`]: 0 } });
    const f2 = await collectUntil(ca, 'synced');
    assert.deepEqual(f2.filter((f) => f.op === 'update'), [], 'keys are canonical conversation ids, as in since');
  } finally { await closeAll(ca, cc); }
});
