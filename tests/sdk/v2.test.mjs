// The SDK's version 2 features (web/parley.js) in Node against a real server: edit,
// delete, react, replies, attachments (upload with progress, download with the token,
// Range), search with paging, /changes, update events, and mods in the sync after being
// offline (a reconnecting client ends with every message in its current state).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { signedUp, waitFor, collect, tapSocket, sleep, suite } from './helpers.mjs';

const S = suite();
const { track, pair } = S;

// The latest state of every message a client was told about: messages, then updates.
function states(c) {
  const by = new Map();
  const key = (conv, seq) => `${conv}:${seq}`;
  c.on('message', (m) => by.set(key(m.conv, m.seq), m));
  c.on('update', (u) => by.set(key(u.conv, u.seq), u.message));
  return { get: (conv, seq) => by.get(key(conv, seq)), by };
}

function collectUpdates(c) {
  const all = [];
  c.on('update', (u) => all.push(u));
  return all;
}

test('edit, react and delete over the socket: acks with dense mods, update events on both sides', { timeout: 30000 }, async () => {
  const { a, b, conv } = await pair();
  const ua = collectUpdates(a);
  const ub = collectUpdates(b);
  const sb = states(b);
  const m1 = await a.send(conv, 'helo world');
  const m2 = await b.send(conv, 'second');
  await waitFor(() => sb.get(conv, m2.seq), 5000, 'both messages at b');

  const e = await a.edit(conv, m1.seq, 'hello world');
  assert.deepEqual([e.conv, e.seq, e.mod], [conv, m1.seq, 1]);
  const r1 = await b.react(conv, m1.seq, '👍');
  assert.equal(r1.mod, 2);
  const r2 = await a.react(conv, m1.seq, '👍', true);
  assert.equal(r2.mod, 3);
  // adding it again changes nothing: acked with the message's current mod
  const again = await a.react(conv, m1.seq, '👍');
  assert.equal(again.mod, 3);
  const r3 = await a.unreact(conv, m1.seq, '👍');
  assert.equal(r3.mod, 4);
  const d = await b.deleteMessage(conv, m2.seq);
  assert.equal(d.mod, 5);

  await waitFor(() => ub.length === 5 && ua.length === 5, 5000, 'five update events on each side');
  assert.deepEqual(ub.map((u) => u.mod), [1, 2, 3, 4, 5]);
  assert.deepEqual(ua.map((u) => u.mod), [1, 2, 3, 4, 5]);
  const edited = ub[0].message;
  assert.equal(edited.body, 'hello world');
  assert.equal(typeof edited.edited_at, 'number');
  assert.deepEqual(ub[2].message.reactions, { '👍': [b.user.id, a.user.id] });
  assert.deepEqual(ub[3].message.reactions || {}, { '👍': [b.user.id] });
  const gone = sb.get(conv, m2.seq);
  assert.equal(gone.deleted, true);
  assert.equal(gone.body, '');
  assert.equal(a.modCursor(conv), 5);
  assert.equal(b.modCursor(conv), 5);

  // history carries the current state
  const page = await b.history(conv);
  const h1 = page.messages.find((m) => m.seq === m1.seq);
  assert.equal(h1.body, 'hello world');
  assert.equal(h1.mod, 4);
  assert.equal(page.messages.find((m) => m.seq === m2.seq).deleted, true);
});

test('refusals: edit of another user\'s message, bad emoji, editing a deleted message, empty edit', { timeout: 30000 }, async () => {
  const { a, b, conv } = await pair();
  const m1 = await a.send(conv, 'mine');
  await assert.rejects(b.edit(conv, m1.seq, 'not yours'), { code: 'forbidden' });
  await assert.rejects(b.deleteMessage(conv, m1.seq), { code: 'forbidden' }); // nobody may in a direct conversation
  await assert.rejects(a.react(conv, m1.seq, 'two words'), { code: 'bad_request' });
  await assert.rejects(a.edit(conv, 999, 'nothing there'), { code: 'not_found' });
  await assert.rejects(a.edit(conv, m1.seq, ''), { code: 'bad_request' }); // refused locally
  await a.deleteMessage(conv, m1.seq);
  await assert.rejects(a.edit(conv, m1.seq, 'back from the dead'), { code: 'bad_request' });
  await assert.rejects(b.react(conv, m1.seq, '👍'), { code: 'bad_request' });
});

test('ops over HTTP while the socket is down; /changes pages the changes', { timeout: 30000 }, async () => {
  const { a, b, conv } = await pair();
  const sb = states(b);
  const m1 = await a.send(conv, 'typo hre');
  a.disconnect();
  const e = await a.edit(conv, m1.seq, 'typo here');
  assert.equal(e.message.body, 'typo here');
  assert.equal(e.mod, 1);
  const r = await a.react(conv, m1.seq, '🎉');
  assert.deepEqual(r.message.reactions, { '🎉': [a.user.id] });
  await waitFor(() => sb.get(conv, m1.seq) && sb.get(conv, m1.seq).mod === 2, 5000, 'b sees both changes live');
  const ch = await b.changes(conv, { afterMod: 0 });
  assert.equal(ch.last_mod, 2);
  assert.deepEqual(ch.messages.map((m) => [m.seq, m.mod, m.body]), [[m1.seq, 2, 'typo here']]);
  assert.deepEqual((await b.changes(conv, { afterMod: 2 })).messages, []);
});

test('a reply carries reply_to to every member', { timeout: 30000 }, async () => {
  const { a, b, conv } = await pair();
  const mb = collect(b);
  const q = await a.send(conv, 'question?');
  const ans = await b.send(conv, 'answer', { replyTo: q.seq });
  await waitFor(() => mb.all.length === 2, 5000, 'both at b');
  assert.equal(mb.all[1].reply_to, q.seq);
  const page = await a.history(conv);
  assert.equal(page.messages.find((m) => m.seq === ans.seq).reply_to, q.seq);
  await assert.rejects(b.send(conv, 'to nothing', { replyTo: 999 }), { code: 'bad_request' });
});

test('attachments: upload with progress, send, download with the token, Range, strangers refused', { timeout: 30000 }, async () => {
  const { a, b, conv } = await pair();
  const mb = collect(b);
  const bytes = new Uint8Array(200 * 1024);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + 7) & 0xff;
  const progress = [];
  const events = [];
  a.on('upload_progress', (p) => events.push(p));
  const att = await a.upload(bytes, { name: 'data.bin', type: 'application/octet-stream', onProgress: (p) => progress.push(p.loaded) });
  assert.equal(typeof att.id, 'string');
  assert.deepEqual([att.name, att.type, att.size], ['data.bin', 'application/octet-stream', bytes.length]);
  assert.equal(progress[0], 0);
  assert.equal(progress.at(-1), bytes.length);
  assert.ok(events.length >= 2);
  const png = Buffer.from('89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000201ff6b8c2f540000000049454e44ae426082', 'hex');
  const img = await a.upload(png, { name: 'dot.png', type: 'image/png' });

  const ack = await a.send(conv, '', { attachments: [att, img] });
  await waitFor(() => mb.all.length === 1, 5000, 'the message at b');
  assert.deepEqual(mb.all[0].attachments.map((x) => x.id), [att.id, img.id]);
  assert.equal(mb.all[0].body, '');

  const got = new Uint8Array(await (await b.attachmentBlob(att.id)).arrayBuffer());
  assert.equal(got.length, bytes.length);
  assert.ok(got.every((v, i) => v === bytes[i]), 'the bytes round-trip');
  const res = await b.fetchAttachment(img.id);
  assert.equal(res.headers.get('content-type'), 'image/png');
  assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  const part = await b.fetchAttachment(att.id, { range: 'bytes=10-19' });
  assert.equal(part.status, 206);
  assert.deepEqual([...new Uint8Array(await part.arrayBuffer())], [...bytes.slice(10, 20)]);
  assert.equal(b.attachmentUrl(att.id), `${S.srv.url}/api/attachments/${encodeURIComponent(att.id)}`);

  const stranger = track(await signedUp(S.srv, {}, 's'));
  await assert.rejects(stranger.attachmentBlob(att.id), { code: 'not_found' });
  // attached once: a second message cannot take it again
  await assert.rejects(a.send(conv, 'again', { attachments: [att] }), { code: 'bad_request' });
  // local refusals
  await assert.rejects(a.upload(new Uint8Array(0), { name: 'empty' }), { code: 'bad_request' });
  const small = track(await signedUp(S.srv, { maxUploadBytes: 10 }, 't'));
  await assert.rejects(small.upload(new Uint8Array(11), { name: 'big' }), { code: 'too_large' });
  assert.ok(ack.seq >= 1);
});

test('search: whole words, accents, prefix, paging with next, one conversation', { timeout: 30000 }, async () => {
  const { a, b, conv } = await pair();
  const other = await a.createGroup('elsewhere', []);
  const word = `zebra${Date.now().toString(36)}`;
  for (let i = 1; i <= 5; i++) await a.send(conv, `${word} number ${i}`);
  await a.send(other.id, `${word} in the group`);
  await a.send(conv, 'Crème brûlée tonight');
  const hits = async (q, opts) => {
    for (let i = 0; i < 30; i++) { // other changes show in search within a second
      const r = await b.search(q, opts);
      if (r.results.length) return r;
      await sleep(100);
    }
    return b.search(q, opts);
  };
  const first = await hits(word, { limit: 2 });
  assert.equal(first.results.length, 2);
  assert.deepEqual(first.results.map((r) => r.body), [`${word} number 5`, `${word} number 4`]);
  assert.ok(first.next);
  const all = [];
  for await (const page of b.searchPages(word, { limit: 2 })) all.push(...page.results);
  assert.deepEqual(all.map((r) => r.body), [5, 4, 3, 2, 1].map((i) => `${word} number ${i}`)); // b is not in the group
  assert.ok(all.every((r) => r.conv === conv && typeof r.seq === 'number' && typeof r.ts === 'number' && r.from === a.user.id));
  const mine = await a.search(word, { conv: other.id });
  assert.deepEqual(mine.results.map((r) => r.body), [`${word} in the group`]);
  assert.equal((await hits('creme brulee')).results.length, 1);
  assert.equal((await hits(word.slice(0, -2))).results.length, 5);
  await assert.rejects(b.search(word, { conv: other.id }), { code: 'not_found' });
});

test('offline, then back: the sync with mods brings every message to its current state', { timeout: 30000 }, async () => {
  const { a, b, conv } = await pair();
  const sb = states(b);
  const m = [];
  for (let i = 1; i <= 4; i++) m.push(await a.send(conv, `message ${i}`));
  await waitFor(() => sb.get(conv, m[3].seq), 5000, 'all at b');
  await a.react(conv, m[0].seq, '👍');
  await waitFor(() => b.modCursor(conv) === 1, 5000, 'b holds mod 1');

  b.disconnect();
  await a.edit(conv, m[0].seq, 'message 1, edited');
  await a.edit(conv, m[0].seq, 'message 1, edited twice');
  await a.react(conv, m[1].seq, '❤️');
  await a.deleteMessage(conv, m[2].seq);
  await a.unreact(conv, m[0].seq, '👍');
  await a.send(conv, 'message 5');
  const sent = [];
  b.on('update', (u) => sent.push(u.mod));
  b.connect();
  const want = (await a.history(conv)).messages;
  await waitFor(() => b.modCursor(conv) === 6, 10000, 'b caught up to mod 6');
  await waitFor(() => sb.get(conv, 5), 5000, 'the new message');
  for (const w of want) {
    const got = sb.get(conv, w.seq);
    assert.equal(got.body, w.body, `seq ${w.seq}`);
    assert.equal(!!got.deleted, !!w.deleted, `seq ${w.seq} deleted`);
    assert.deepEqual(got.reactions || {}, w.reactions || {}, `seq ${w.seq} reactions`);
  }
  // each changed message came once, in its latest state (not every intermediate one)
  assert.deepEqual(sent.slice().sort((x, y) => x - y), sent);
  assert.equal(sent.length, 3);
});

test('a missed update frame (mod skips ahead) triggers a sync that repairs it', { timeout: 30000 }, async () => {
  let swallow = false;
  const tap = tapSocket({ incoming: (f) => swallow && f.op === 'update' && f.mod === 2 });
  const { a, b, conv } = await pair({}, { WebSocket: tap.TapSocket });
  const sb = states(b);
  const gaps = [];
  b.on('gap', (g) => gaps.push(g));
  const m1 = await a.send(conv, 'one');
  await a.edit(conv, m1.seq, 'one, first edit');
  await waitFor(() => b.modCursor(conv) === 1, 5000, 'mod 1 at b');
  swallow = true;
  await a.react(conv, m1.seq, '😮'); // mod 2: lost on the way
  const m2 = await a.send(conv, 'two');
  swallow = false;
  await a.edit(conv, m2.seq, 'two, edited'); // mod 3: the gap shows
  await waitFor(() => b.modCursor(conv) === 3, 5000, 'b repaired the gap');
  assert.ok(gaps.some((g) => g.haveMod === 1 && g.gotMod === 3));
  assert.ok(tap.sent.some((f) => f.op === 'sync' && f.mods && f.mods[String(conv)] === 1), 'the sync asked from mod 1');
  assert.deepEqual(sb.get(conv, m1.seq).reactions, { '😮': [a.user.id] });
  assert.equal(sb.get(conv, m2.seq).body, 'two, edited');
});

test('an op in flight when the socket dies is sent again after the reconnect', { timeout: 30000 }, async () => {
  let drop = false;
  const tap = tapSocket({ outgoing: (f, sock) => { if (drop && f.op === 'edit') { drop = false; setTimeout(() => sock.kill(), 0); return true; } return false; } });
  const { a, b, conv } = await pair({ WebSocket: tap.TapSocket });
  const sb = states(b);
  const m1 = await a.send(conv, 'fix me');
  drop = true;
  const e = await a.edit(conv, m1.seq, 'fixed');
  assert.equal(e.mod, 1);
  await waitFor(() => sb.get(conv, m1.seq) && sb.get(conv, m1.seq).body === 'fixed', 5000, 'b sees the edit');
  assert.ok(tap.sockets.length >= 2, 'it reconnected');
});

test('in a group the owner deletes a member\'s message; a member cannot delete the owner\'s', { timeout: 30000 }, async () => {
  const owner = track(await signedUp(S.srv, {}, 'o'));
  const member = track(await signedUp(S.srv, {}, 'm'));
  const g = await owner.createGroup('crew', [member.user.id]);
  await waitFor(() => member.cursor(g.id) !== undefined, 5000, 'member knows the group');
  const seen = states(member);
  const mine = await owner.send(g.id, 'from the owner');
  const theirs = await member.send(g.id, 'from a member');
  await assert.rejects(member.deleteMessage(g.id, mine.seq), { code: 'forbidden' });
  const d = await owner.deleteMessage(g.id, theirs.seq);
  assert.equal(d.mod, 1);
  await waitFor(() => seen.get(g.id, theirs.seq) && seen.get(g.id, theirs.seq).deleted, 5000, 'the member sees the tombstone');
  assert.equal(seen.get(g.id, theirs.seq).body, '');
});
