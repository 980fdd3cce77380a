// Version 2, every op and route with its errors: edit, delete, react on/off (WebSocket and
// HTTP), send with reply_to and attachments, GET messages in their current state, /changes;
// update frames to every member connection (the actor's included) in mod order; acks carry
// the mod; a reaction that changes nothing acks the message's current mod.
// On SQLite by default, on PostgreSQL with PARLEY_E2E_PG_URL (v2-helpers.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  http, signupMany, uniq, assertError, createGroup, createDirect, getConv, openSocket, closeAll,
  sendMany, assertMessage,
} from './helpers.mjs';
import {
  startV2Server, edit, del, react, okAck, errCode, sendV2, httpEdit, httpDelete, httpReact, changes,
  history, messageAt, assertUpdate, updatesUntil, uploadOk, download,
} from './v2-helpers.mjs';

let srv;
let a; let b; let c; let x;
before(async () => {
  srv = await startV2Server({ PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0' });
  [a, b, c, x] = await signupMany(srv, 4, 'v2op');
});
after(async () => { if (srv) await srv.stop(); });

// A group of a (owner), b and c with n messages from a then n from b; sockets for a, b, c.
async function setup(n = 2) {
  const g = await createGroup(srv, a, [b.user.id, c.user.id]);
  const [ca, cb, cc] = await Promise.all([a, b, c].map((u) => openSocket(srv, u.token)));
  const acksA = await sendMany(ca, g.id, n);
  const acksB = await sendMany(cb, g.id, n);
  for (const k of [ca, cb, cc]) {
    await k.roundtrip();
    k.take('msg');
  }
  return { g, ca, cb, cc, seqA: acksA.map((k) => k.seq), seqB: acksB.map((k) => k.seq) };
}

test('edit over WebSocket: ack with seq and mod 1, 2, ...; update to every member connection; history shows it', async () => {
  const { g, ca, cb, cc, seqA } = await setup();
  const ca2 = await openSocket(srv, a.token);
  try {
    const before = await messageAt(srv, a, g.id, seqA[0]);
    assert.equal(before.mod, undefined, 'a message never changed has no mod');
    assert.equal(before.edited_at, undefined, 'nor edited_at');
    assert.equal((await getConv(srv, a, g.id)).last_mod, 0, 'last_mod 0 when nothing was changed');

    const t0 = Date.now();
    const ack = await okAck(edit(ca, g.id, seqA[0], 'fixed the typo'), 'edit');
    assert.equal(ack.conv, g.id);
    assert.equal(ack.seq, seqA[0]);
    assert.equal(ack.mod, 1, 'the first change takes mod 1');
    for (const [k, who] of [[ca, 'actor'], [ca2, "actor's other connection"], [cb, 'b'], [cc, 'c']]) {
      const u = await k.next('update');
      assertUpdate(u, who);
      assert.equal(u.conv, g.id);
      assert.equal(u.seq, seqA[0]);
      assert.equal(u.mod, 1);
      assertMessage(u.message, `${who}: update.message`);
      assert.equal(u.message.body, 'fixed the typo');
      assert.equal(u.message.from, a.user.id);
      assert.equal(u.message.id, before.id, 'the client id stays');
      assert.equal(u.message.ts, before.ts, 'ts stays');
      assert.ok(Number.isSafeInteger(u.message.edited_at) && u.message.edited_at >= t0 - 60000, `edited_at: ${u.message.edited_at}`);
    }
    const after1 = await messageAt(srv, b, g.id, seqA[0]);
    assert.equal(after1.body, 'fixed the typo');
    assert.equal(after1.mod, 1);
    assert.ok(after1.edited_at >= after1.ts);
    assert.equal((await getConv(srv, b, g.id)).last_mod, 1);
    assert.equal((await getConv(srv, b, g.id)).last_seq, 4, 'an edit takes no message seq');

    // editing to the same body again still takes a new mod and acks
    const again = await okAck(edit(ca, g.id, seqA[0], 'fixed the typo'), 'same body again');
    assert.equal(again.mod, 2);
    assert.equal((await cb.next('update')).mod, 2);
    // the other's message, then an edit of a's second message: mods 3
    const second = await okAck(edit(ca, g.id, seqA[1], 'second, edited'), 'edit 2');
    assert.equal(second.mod, 3);
    assert.equal((await messageAt(srv, c, g.id, seqA[1])).mod, 3);
    assert.equal((await messageAt(srv, c, g.id, seqA[0])).mod, 2, 'each message records the mod of ITS last change');
  } finally { await closeAll(ca, ca2, cb, cc); }
});

test('edit errors: not_found, forbidden, bad_request (deleted, empty body, missing fields), too_large', async () => {
  const { g, ca, cb, cc, seqA, seqB } = await setup();
  const cx = await openSocket(srv, x.token);
  try {
    await errCode(edit(cb, g.id, seqA[0], 'not mine'), 'forbidden', "b edits a's message");
    await errCode(edit(ca, g.id, seqB[0], 'owner, still not mine'), 'forbidden', "the owner edits b's message");
    await errCode(edit(ca, g.id, 99, 'nothing there'), 'not_found', 'no such seq');
    const zero = await edit(ca, g.id, 0, 'seq 0');
    assert.ok(zero.op === 'error' && ['not_found', 'bad_request'].includes(zero.code), `seq 0: ${JSON.stringify(zero)}`);
    await errCode(edit(cx, g.id, seqA[0], 'outsider'), 'not_found', 'not a member');
    await errCode(edit(ca, 987654321, 1, 'no conv'), 'not_found', 'no such conversation');
    await errCode(edit(ca, g.id, seqA[0], ''), 'bad_request', 'empty body');
    await errCode(okMissing(ca, { op: 'edit', conv: g.id, seq: seqA[0] }), 'bad_request', 'no body');
    await errCode(okMissing(ca, { op: 'edit', conv: g.id, body: 'x' }), 'bad_request', 'no seq');
    await errCode(okMissing(ca, { op: 'edit', seq: seqA[0], body: 'x' }), 'bad_request', 'no conv');
    await errCode(okMissing(ca, { op: 'edit', conv: g.id, seq: seqA[0], body: 5 }), 'bad_request', 'numeric body');
    await errCode(edit(ca, g.id, seqA[0], 'x'.repeat(4097)), 'too_large', 'body over 4096 bytes');
    const fits = await okAck(edit(ca, g.id, seqA[0], 'é'.repeat(2048)), 'body of exactly 4096 bytes');
    assert.equal(fits.mod, 1, 'the refused edits took no mod');
    await okAck(del(ca, g.id, seqA[1]), 'delete');
    await errCode(edit(ca, g.id, seqA[1], 'back from the dead'), 'bad_request', 'edit a deleted message');
    assert.equal((await getConv(srv, a, g.id)).last_mod, 2, 'only the two changes took a mod');
    for (const k of [ca, cb, cc]) await k.roundtrip();
    assert.deepEqual(cb.take('update').map((u) => u.mod), [1, 2], 'no update for a refused change');
  } finally { await closeAll(ca, cb, cc, cx); }
});

// The contract's fields of a message's attachments (the project may add fields).
const attOf = (m) => (m.attachments || []).map(({ id, name, type, size }) => ({ id, name, type, size }));

// A frame with a given id but maybe missing fields; the answer for that id.
function okMissing(conn, frame) {
  const id = uniq('m');
  conn.send({ ...frame, id });
  return conn.next((f) => (f.op === 'ack' || f.op === 'error') && f.id === id);
}

test('delete: the sender; a group owner or admin; nobody else; tombstone with body "" and no attachments', async () => {
  const { g, ca, cb, cc, seqA, seqB } = await setup(3);
  try {
    // c is a plain member: may not delete a's or b's message
    await errCode(del(cc, g.id, seqA[0]), 'forbidden', 'member deletes another member\'s message');
    await errCode(del(cc, g.id, 99), 'not_found', 'no such seq');
    // the sender deletes its own
    const d1 = await okAck(del(cb, g.id, seqB[0]), 'sender deletes');
    assert.equal(d1.mod, 1);
    assert.equal(d1.seq, seqB[0]);
    for (const k of [ca, cb, cc]) {
      const u = await k.next('update');
      assertUpdate(u);
      assert.equal(u.message.deleted, true);
      assert.equal(u.message.body, '');
      assert.equal(u.message.attachments, undefined);
      assert.equal(u.message.from, b.user.id, 'the tombstone keeps its sender');
    }
    // the owner deletes b's message
    assert.equal((await okAck(del(ca, g.id, seqB[1]), 'owner deletes')).mod, 2);
    // c made admin deletes a's (the owner's) message
    const r = await http(srv, 'PATCH', `/api/conversations/${g.id}/members/${c.user.id}`, { token: a.token, body: { role: 'admin' } });
    assert.equal(r.status, 204, r.text);
    assert.equal((await okAck(del(cc, g.id, seqA[0]), 'admin deletes')).mod, 3);
    // deleting twice: the message is already a tombstone
    const twice = await del(cb, g.id, seqB[0]);
    assert.ok(twice.op === 'ack' || (twice.op === 'error' && ['bad_request', 'not_found'].includes(twice.code)), `delete a deleted message: ${JSON.stringify(twice)}`);

    const msgs = await history(srv, b, g.id);
    const bySeq = new Map(msgs.map((m) => [m.seq, m]));
    assert.equal(msgs.length, 6, 'a deleted message stays in history as a tombstone; seqs stay dense');
    for (const s of [seqB[0], seqB[1], seqA[0]]) {
      const m = bySeq.get(s);
      assert.equal(m.deleted, true, `seq ${s}`);
      assert.equal(m.body, '', `seq ${s}`);
      assert.equal(m.attachments, undefined);
      assert.equal(m.reactions, undefined);
    }
    assert.notEqual(bySeq.get(seqA[1]).deleted, true);
    assert.ok(bySeq.get(seqA[1]).body.length > 0);
    // the conversation's last_message may be a tombstone: it is still the message at last_seq
    const conv = await getConv(srv, a, g.id);
    assert.ok(conv.last_mod >= 3);
    assert.equal(conv.last_seq, 6);
  } finally { await closeAll(ca, cb, cc); }
});

test('delete in a direct conversation: each deletes only its own messages', async () => {
  const d = await createDirect(srv, a, b.user.id);
  const [ca, cb] = await Promise.all([a, b].map((u) => openSocket(srv, u.token)));
  try {
    const [ma] = await sendMany(ca, d.id, 1);
    const [mb] = await sendMany(cb, d.id, 1);
    await errCode(del(cb, d.id, ma.seq), 'forbidden', "b deletes a's message in a direct conversation");
    await errCode(del(ca, d.id, mb.seq), 'forbidden', "a deletes b's message in a direct conversation");
    assertError(await httpDelete(srv, a, d.id, mb.seq), 403, 'HTTP: a deletes b\'s message');
    await okAck(del(ca, d.id, ma.seq), 'a deletes its own');
    const r = await httpDelete(srv, b, d.id, mb.seq);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.message.deleted, true);
  } finally { await closeAll(ca, cb); }
});

test('react: on and off; users in the order they reacted; no-op acks the current mod and sends no update', async () => {
  const { g, ca, cb, cc, seqA } = await setup();
  try {
    const s = seqA[0];
    assert.equal((await okAck(react(cb, g.id, s, '👍'), 'b 👍')).mod, 1);
    assert.equal((await okAck(react(ca, g.id, s, '👍'), 'a 👍')).mod, 2);
    assert.equal((await okAck(react(cc, g.id, s, '🎉'), 'c 🎉')).mod, 3);
    let u;
    for (let i = 0; i < 3; i++) u = await cc.next('update');
    assertUpdate(u);
    assert.deepEqual(u.message.reactions, { '👍': [b.user.id, a.user.id], '🎉': [c.user.id] });
    assert.deepEqual((await messageAt(srv, a, g.id, s)).reactions, { '👍': [b.user.id, a.user.id], '🎉': [c.user.id] });

    // adding one already there, removing one not there: nothing changes, ack with the current mod
    const noop1 = await okAck(react(cb, g.id, s, '👍'), 'b 👍 again');
    assert.equal(noop1.mod, 3, 'the message\'s current mod');
    const noop2 = await okAck(react(cb, g.id, s, '🎉', false), 'b removes a 🎉 it does not have');
    assert.equal(noop2.mod, 3);
    const noop3 = await okAck(react(cb, g.id, seqA[1], '🎉', false), 'removing from a message never changed');
    assert.equal(noop3.mod, 0, 'a message never changed: mod 0');
    for (const k of [ca, cb, cc]) await k.roundtrip();
    assert.equal(cb.take('update').length, 3, 'no update frame for the no-ops');

    // off: b's 👍 goes; c's 🎉 goes and the emoji disappears with its last user
    assert.equal((await okAck(react(cb, g.id, s, '👍', false), 'b 👍 off')).mod, 4);
    assert.equal((await okAck(react(cc, g.id, s, '🎉', false), 'c 🎉 off')).mod, 5);
    const m = await messageAt(srv, c, g.id, s);
    assert.deepEqual(m.reactions, { '👍': [a.user.id] });
    assert.equal(m.mod, 5);
    // b again: at the end of the list
    await okAck(react(cb, g.id, s, '👍'), 'b 👍 again');
    assert.deepEqual((await messageAt(srv, c, g.id, s)).reactions, { '👍': [a.user.id, b.user.id] });
    // the last reaction off: no reactions field at all
    await okAck(react(ca, g.id, s, '👍', false));
    await okAck(react(cb, g.id, s, '👍', false));
    assert.equal((await messageAt(srv, c, g.id, s)).reactions, undefined, 'emoji with no users are absent');
    // reactions do not touch the body or edited_at
    assert.equal((await messageAt(srv, c, g.id, s)).edited_at, undefined);
  } finally { await closeAll(ca, cb, cc); }
});

test('react errors: bad emoji (empty, whitespace, control characters, over 32 bytes), deleted message, not a member, missing fields', async () => {
  const { g, ca, cb, cc, seqA, seqB } = await setup();
  const cx = await openSocket(srv, x.token);
  try {
    const s = seqA[0];
    for (const [emoji, what] of [
      ['', 'empty'], [' ', 'a space'], ['👍 ', 'trailing space'], ['a b', 'inner space'], ['\t', 'tab'],
      ['\n👍', 'newline'], ['\u0001', 'control character'], ['x\u007f', 'DEL'], ['\u0085', 'C1 control (NEL)'],
      ['\u00a0', 'no-break space'], ['\u3000', 'ideographic space'],
      ['a'.repeat(33), '33 bytes'], ['👍'.repeat(9), '36 bytes (9 four-byte emoji)'],
    ]) {
      await errCode(react(ca, g.id, s, emoji), 'bad_request', `emoji ${what} ${JSON.stringify(emoji)}`);
    }
    await errCode(okMissing(ca, { op: 'react', conv: g.id, seq: s, emoji: 5, on: true }), 'bad_request', 'numeric emoji');
    await errCode(okMissing(ca, { op: 'react', conv: g.id, seq: s, on: true }), 'bad_request', 'no emoji');
    // 32 bytes exactly is fine (8 four-byte emoji), and so is a multi-codepoint emoji
    await okAck(react(ca, g.id, s, '👍'.repeat(8)), '32 bytes');
    await okAck(react(ca, g.id, s, '👩‍💻'), 'a ZWJ sequence');
    await okAck(react(ca, g.id, s, '+1'), 'plain text without spaces');
    await errCode(react(cx, g.id, s, '👍'), 'not_found', 'not a member');
    await errCode(react(ca, g.id, 99, '👍'), 'not_found', 'no such message');
    await okAck(del(cb, g.id, seqB[0]), 'b deletes its message');
    await errCode(react(ca, g.id, seqB[0], '👍'), 'bad_request', 'react to a deleted message');
    await errCode(react(ca, g.id, seqB[0], '👍', false), 'bad_request', 'react off on a deleted message');
    assert.equal((await getConv(srv, a, g.id)).last_mod, 4);
  } finally { await closeAll(ca, cb, cc, cx); }
});

test('update frames: every member connection, the actor\'s included, in mod order across users and kinds', async () => {
  const { g, ca, cb, cc, seqA, seqB } = await setup(3);
  const ca2 = await openSocket(srv, a.token);
  const outsider = await openSocket(srv, x.token);
  try {
    // changes from three users without waiting for acks in between
    const ps = [
      edit(ca, g.id, seqA[0], 'e1'), react(cb, g.id, seqA[0], '👀'), react(cc, g.id, seqB[0], '👀'),
      edit(cb, g.id, seqB[1], 'e2'), del(ca, g.id, seqA[2]), react(ca, g.id, seqB[0], '🔥'),
      edit(ca, g.id, seqA[1], 'e3'), react(cb, g.id, seqA[0], '👀', false), del(cb, g.id, seqB[2]),
    ];
    const acks = await Promise.all(ps.map((p) => okAck(p)));
    const mods = acks.map((k) => k.mod).sort((p, q) => p - q);
    assert.deepEqual(mods, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    for (const [k, who] of [[ca, 'a'], [ca2, 'a (second connection)'], [cb, 'b'], [cc, 'c']]) {
      const ups = await updatesUntil(k, g.id, 9);
      assert.deepEqual(ups.map((u) => u.mod), [1, 2, 3, 4, 5, 6, 7, 8, 9], `${who}: update frames in mod order, each once`);
      for (const u of ups) assertUpdate(u, who);
      // each update matches the ack with that mod
      for (const ack of acks) assert.equal(ups.find((u) => u.mod === ack.mod).seq, ack.seq, `${who}: mod ${ack.mod}`);
    }
    await outsider.roundtrip();
    assert.equal(outsider.take('update').length, 0, 'a non-member gets nothing');
    // the last update of each message is its state in history
    const msgs = await history(srv, c, g.id);
    for (const m of msgs) if (m.mod) assert.ok(m.mod >= 1 && m.mod <= 9);
  } finally { await closeAll(ca, ca2, cb, cc, outsider); }
});

test('send with reply_to: msg frames and history carry it; bad reply_to is bad_request with the id', async () => {
  const { g, ca, cb, cc, seqA } = await setup();
  const other = await createGroup(srv, a, [b.user.id]);
  try {
    const ack = await okAck(sendV2(cb, g.id, 'replying', { reply_to: seqA[0] }), 'reply');
    for (const k of [ca, cb, cc]) {
      const m = await k.next((f) => f.op === 'msg' && f.seq === ack.seq);
      assert.equal(m.reply_to, seqA[0], 'the live msg frame carries reply_to');
    }
    const m = await messageAt(srv, a, g.id, ack.seq);
    assert.equal(m.reply_to, seqA[0]);
    assert.equal((await messageAt(srv, a, g.id, seqA[0])).reply_to, undefined, 'absent when it does not apply');
    // HTTP send too
    const r = await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: c.token, body: { id: uniq('h'), body: 'http reply', reply_to: ack.seq } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.body.reply_to, ack.seq);
    // a reply to a deleted message is still a reply to an existing seq
    await okAck(del(ca, g.id, seqA[1]));
    await okAck(sendV2(cb, g.id, 'to a tombstone', { reply_to: seqA[1] }), 'reply to a deleted message');

    const last = (await getConv(srv, a, g.id)).last_seq;
    for (const [rt, what] of [[last + 1, 'a seq not yet used'], [99, 'far ahead'], [0, 'seq 0'], [-1, 'negative'], ['1', 'a string'], [1.5, 'not an integer']]) {
      const f = await sendV2(cb, g.id, `bad reply ${what}`, { reply_to: rt });
      assert.equal(f.op, 'error', `${what}: ${JSON.stringify(f)}`);
      assert.equal(f.code, 'bad_request', `${what}: ${JSON.stringify(f)}`);
      assert.ok(typeof f.id === 'string' && f.id.length > 0, 'the error carries the send\'s id');
    }
    // a seq of another conversation only: other has no message yet
    await errCode(sendV2(cb, other.id, 'cross', { reply_to: 1 }), 'bad_request', 'reply_to in an empty conversation');
    assert.equal((await getConv(srv, a, g.id)).last_seq, last, 'the refused sends took no seq');
  } finally { await closeAll(ca, cb, cc); }
});

test('send with attachments: msg frames and history carry them; members may download; errors', async () => {
  const { g, ca, cb, cc } = await setup(1);
  const cx = await openSocket(srv, x.token);
  try {
    const bytes = Buffer.from(`file ${uniq('att')} contents\n`);
    const png = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.alloc(64, 7)]);
    const at1 = await uploadOk(srv, a, bytes, { name: 'notes.txt', type: 'text/plain' });
    const at2 = await uploadOk(srv, a, png, { name: 'pic.png', type: 'image/png' });
    assert.deepEqual({ name: at1.name, type: at1.type, size: at1.size }, { name: 'notes.txt', type: 'text/plain', size: bytes.length });

    // before it is sent, only the uploader may fetch it
    assert.equal((await download(srv, b, at1.id)).status, 404, 'not yet sent: not for others');
    const ack = await okAck(sendV2(ca, g.id, '', { attachments: [at1.id, at2.id] }), 'body "" with attachments');
    const want = [
      { id: at1.id, name: 'notes.txt', type: 'text/plain', size: bytes.length },
      { id: at2.id, name: 'pic.png', type: 'image/png', size: png.length },
    ];
    for (const k of [ca, cb, cc]) {
      const m = await k.next((f) => f.op === 'msg' && f.seq === ack.seq);
      assert.equal(m.body, '');
      assert.deepEqual(attOf(m), want, 'the live msg frame carries the attachments, in the order given');
    }
    const m = await messageAt(srv, c, g.id, ack.seq);
    assert.deepEqual(attOf(m), want);
    const got = await download(srv, c, at1.id);
    assert.equal(got.status, 200);
    assert.deepEqual(got.bytes, bytes, 'a member downloads the bytes');
    assert.equal((await download(srv, x, at1.id)).status, 404, 'a non-member does not');

    // errors, each bad_request with the send's id
    const mine = await uploadOk(srv, b, Buffer.from('b\'s file'), { name: 'b.txt', type: 'text/plain' });
    await errCode(sendV2(ca, g.id, 'not mine', { attachments: [mine.id] }), 'bad_request', "another user's upload");
    await errCode(sendV2(ca, g.id, 'again', { attachments: [at1.id] }), 'bad_request', 'an upload already attached');
    await errCode(sendV2(ca, g.id, 'unknown', { attachments: ['no-such-attachment'] }), 'bad_request', 'an unknown id');
    await errCode(sendV2(ca, g.id, 'not strings', { attachments: [5] }), 'bad_request', 'a non-string id');
    await errCode(sendV2(ca, g.id, '', { attachments: [] }), 'bad_request', 'empty body and no attachments');
    const eleven = [];
    for (let i = 0; i < 11; i++) eleven.push((await uploadOk(srv, a, Buffer.from(`f${i}`), { name: `f${i}` })).id);
    await errCode(sendV2(ca, g.id, 'eleven', { attachments: eleven }), 'bad_request', '11 attachments');
    const ten = await okAck(sendV2(ca, g.id, 'ten', { attachments: eleven.slice(0, 10) }), '10 attachments');
    assert.equal((await messageAt(srv, b, g.id, ten.seq)).attachments.length, 10);
    // a refused send attached nothing: the 11th is still free
    await okAck(sendV2(ca, g.id, 'the 11th', { attachments: [eleven[10]] }), 'the 11th alone');
    // the same upload in one send twice
    const dup = await uploadOk(srv, a, Buffer.from('dup'), { name: 'dup' });
    const f = await sendV2(ca, g.id, 'dup', { attachments: [dup.id, dup.id] });
    assert.ok(f.op === 'error' && f.code === 'bad_request', `the same attachment twice in one send: ${JSON.stringify(f)}`);
  } finally { await closeAll(ca, cb, cc, cx); }
});

test('HTTP: PATCH, DELETE, PUT/DELETE reaction answer 200 {message} and send update frames', async () => {
  const { g, ca, cb, cc, seqA, seqB } = await setup(2);
  try {
    const e = await httpEdit(srv, a, g.id, seqA[0], 'edited over http');
    assert.equal(e.status, 200, e.text);
    assertMessage(e.body.message);
    assert.equal(e.body.message.body, 'edited over http');
    assert.equal(e.body.message.mod, 1);
    assert.ok(Number.isSafeInteger(e.body.message.edited_at));
    const u1 = await cb.next('update');
    assert.equal(u1.mod, 1);
    assert.deepEqual(u1.message, e.body.message, 'the update carries the same message');

    const p = await httpReact(srv, b, g.id, seqA[0], '❤️');
    assert.equal(p.status, 200, p.text);
    assert.deepEqual(p.body.message.reactions, { '❤️': [b.user.id] });
    assert.equal(p.body.message.mod, 2);
    const same = await httpReact(srv, b, g.id, seqA[0], '❤️');
    assert.equal(same.status, 200, same.text);
    assert.equal(same.body.message.mod, 2, 'PUT again: nothing changes');
    const off = await httpReact(srv, b, g.id, seqA[0], '❤️', false);
    assert.equal(off.status, 200, off.text);
    assert.equal(off.body.message.reactions, undefined);
    assert.equal(off.body.message.mod, 3);
    const offAgain = await httpReact(srv, b, g.id, seqA[0], '❤️', false);
    assert.equal(offAgain.status, 200, offAgain.text);
    assert.equal(offAgain.body.message.mod, 3);
    // an emoji that needs percent-encoding in a path, and a plain ASCII one
    const plus = await httpReact(srv, c, g.id, seqB[0], '+1');
    assert.equal(plus.status, 200, plus.text);
    assert.deepEqual(plus.body.message.reactions, { '+1': [c.user.id] });

    const d = await httpDelete(srv, b, g.id, seqB[1]);
    assert.equal(d.status, 200, d.text);
    assert.equal(d.body.message.deleted, true);
    assert.equal(d.body.message.body, '');
    assert.equal(d.body.message.mod, 5);
    const ups = await updatesUntil(cc, g.id, 5);
    assert.deepEqual(ups.map((u) => u.mod), [1, 2, 3, 4, 5]);
  } finally { await closeAll(ca, cb, cc); }
});

test('HTTP errors: 404 not a member / no message / no conversation, 403, 400, 413, 401', async () => {
  const { g, ca, cb, cc, seqA, seqB } = await setup(2);
  try {
    assertError(await httpEdit(srv, x, g.id, seqA[0], 'outsider'), 404, 'PATCH by a non-member');
    assertError(await httpDelete(srv, x, g.id, seqA[0]), 404, 'DELETE by a non-member');
    assertError(await httpReact(srv, x, g.id, seqA[0], '👍'), 404, 'PUT reaction by a non-member');
    assertError(await httpReact(srv, x, g.id, seqA[0], '👍', false), 404, 'DELETE reaction by a non-member');
    assertError(await httpEdit(srv, a, g.id, 99, 'no such'), 404, 'PATCH no such seq');
    assertError(await httpDelete(srv, a, g.id, 99), 404, 'DELETE no such seq');
    assertError(await httpReact(srv, a, g.id, 99, '👍'), 404, 'PUT reaction no such seq');
    assertError(await httpEdit(srv, a, 987654321, 1, 'no conv'), 404, 'PATCH no such conversation');
    assertError(await httpEdit(srv, b, g.id, seqA[0], 'not mine'), 403, "PATCH another's message");
    assertError(await httpDelete(srv, c, g.id, seqA[0]), 403, "DELETE another's message as a plain member");
    assertError(await httpEdit(srv, a, g.id, seqA[0], ''), 400, 'PATCH with an empty body');
    assertError(await http(srv, 'PATCH', `/api/conversations/${g.id}/messages/${seqA[0]}`, { token: a.token, body: {} }), 400, 'PATCH without body');
    assertError(await http(srv, 'PATCH', `/api/conversations/${g.id}/messages/${seqA[0]}`, { token: a.token, raw: '{"body":' }), 400, 'PATCH with malformed JSON');
    assertError(await httpEdit(srv, a, g.id, seqA[0], 'x'.repeat(4097)), 413, 'PATCH with a body over 4096 bytes');
    for (const [emoji, what] of [[' ', 'space'], ['a b', 'inner space'], ['\u0001', 'control'], ['\t', 'tab'], ['x'.repeat(33), '33 bytes']]) {
      assertError(await httpReact(srv, a, g.id, seqA[0], emoji), 400, `PUT reaction ${what}`);
    }
    // an empty emoji: no emoji segment in the path at all; a 400 or a 404 (no such route)
    const empty = await http(srv, 'PUT', `/api/conversations/${g.id}/messages/${seqA[0]}/reactions/`, { token: a.token });
    assert.ok(empty.status === 400 || empty.status === 404, `PUT reaction with an empty emoji: ${empty.status}`);
    // invalid UTF-8 after percent-decoding
    assertError(await http(srv, 'PUT', `/api/conversations/${g.id}/messages/${seqA[0]}/reactions/%FF`, { token: a.token }), 400, 'emoji not UTF-8');
    assertError(await http(srv, 'PATCH', `/api/conversations/${g.id}/messages/abc`, { token: a.token, body: { body: 'x' } }), 404, 'a seq that is not a number');
    const noAuth = await http(srv, 'PATCH', `/api/conversations/${g.id}/messages/${seqA[0]}`, { body: { body: 'x' } });
    assert.equal(noAuth.status, 401);
    // deleted: edit and react are 400
    assert.equal((await httpDelete(srv, b, g.id, seqB[0])).status, 200);
    assertError(await httpEdit(srv, b, g.id, seqB[0], 'again'), 400, 'PATCH a deleted message');
    assertError(await httpReact(srv, a, g.id, seqB[0], '👍'), 400, 'PUT reaction on a deleted message');
    assert.equal((await getConv(srv, a, g.id)).last_mod, 1, 'only the delete took a mod');
  } finally { await closeAll(ca, cb, cc); }
});

test('GET /changes: messages with mod > after_mod in mod order, last_mod, limit default 50 and clamp 200, errors', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    const acks = await sendMany(ca, g.id, 260);
    // 260 reactions (one per message), then edits of messages 1..10: those move to the end
    const reacts = acks.map((k) => react(ca, g.id, k.seq, '👍'));
    const ra = await Promise.all(reacts.map((p) => okAck(p)));
    assert.deepEqual(ra.map((k) => k.mod).sort((p, q) => p - q), Array.from({ length: 260 }, (_, i) => i + 1));
    for (let s = 1; s <= 10; s++) await okAck(edit(ca, g.id, s, `edit ${s}`));

    const all = await changes(srv, b, g.id, 0);
    assert.equal(all.status, 200, all.text);
    assert.equal(all.body.last_mod, 270);
    assert.equal(all.body.messages.length, 50, 'limit defaults to 50');
    const mods = all.body.messages.map((m) => m.mod);
    assert.deepEqual(mods, Array.from({ length: 50 }, (_, i) => i + 11), 'messages 1..10 changed again: their mod is now 261..270');

    const big = await changes(srv, b, g.id, 0, 1000);
    assert.equal(big.status, 200);
    assert.equal(big.body.messages.length, 200, 'clamped to 200');
    // paging to the end: every message exactly once, in its current state
    const seen = [];
    let after = 0;
    for (let guard = 0; guard < 20; guard++) {
      const r = await changes(srv, b, g.id, after, 70);
      assert.equal(r.status, 200);
      if (r.body.messages.length === 0) break;
      for (let i = 1; i < r.body.messages.length; i++) assert.ok(r.body.messages[i].mod > r.body.messages[i - 1].mod, 'mod order');
      seen.push(...r.body.messages);
      after = r.body.messages.at(-1).mod;
    }
    assert.equal(seen.length, 260);
    assert.equal(new Set(seen.map((m) => m.seq)).size, 260, 'each message once');
    const first = seen.find((m) => m.seq === 1);
    assert.equal(first.body, 'edit 1');
    assert.deepEqual(first.reactions, { '👍': [a.user.id] });
    assert.equal(first.mod, 261);
    const tail = await changes(srv, b, g.id, 270);
    assert.deepEqual(tail.body.messages, []);
    assert.equal(tail.body.last_mod, 270);

    assertError(await changes(srv, x, g.id, 0), 404, 'not a member');
    assertError(await changes(srv, a, 987654321, 0), 404, 'no such conversation');
    assertError(await changes(srv, a, g.id, 0, 0), 400, 'limit 0');
    assertError(await changes(srv, a, g.id, 'abc'), 400, 'after_mod not a number');
    assertError(await changes(srv, a, g.id, -1), 400, 'after_mod negative');
  } finally { await closeAll(ca); }
});

test('GET messages: the current state of every message; a conversation never changed has last_mod 0 and no mod fields', async () => {
  const { g, ca, cb, cc, seqA, seqB } = await setup(2);
  try {
    const fresh = await history(srv, a, g.id);
    for (const m of fresh) for (const k of ['mod', 'edited_at', 'deleted', 'reactions', 'reply_to', 'attachments']) assert.equal(m[k], undefined, `${k} absent on an untouched message`);
    await okAck(edit(ca, g.id, seqA[0], 'now'));
    await okAck(react(cc, g.id, seqA[0], '✅'));
    await okAck(del(cb, g.id, seqB[0]));
    const msgs = await history(srv, c, g.id);
    const by = new Map(msgs.map((m) => [m.seq, m]));
    assert.equal(by.get(seqA[0]).body, 'now');
    assert.deepEqual(by.get(seqA[0]).reactions, { '✅': [c.user.id] });
    assert.equal(by.get(seqA[0]).mod, 2);
    assert.equal(by.get(seqB[0]).deleted, true);
    assert.equal(by.get(seqB[0]).mod, 3);
    // after= paging shows the same state
    const older = await history(srv, c, g.id, 'after=0&limit=50');
    assert.deepEqual(older.find((m) => m.seq === seqA[0]), by.get(seqA[0]));
    // the conversation list carries last_mod
    const list = await http(srv, 'GET', '/api/conversations', { token: b.token });
    assert.equal(list.body.conversations.find((k) => k.id === g.id).last_mod, 3);
  } finally { await closeAll(ca, cb, cc); }
});
