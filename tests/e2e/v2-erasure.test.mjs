// Version 2: a delete erases. Right after a delete's ack, no file under parleyd's data
// directory (database, WAL, shm, free pages, search index, attachment store: every file,
// recursively) holds the message's text, any earlier edited text of it, or its attachment's
// bytes. Each check first makes sure the scan does see the data before the delete, so a
// pass is not a scan that looks in the wrong place.
// On PostgreSQL (PARLEY_E2E_PG_URL) the rows must be gone from the database at once (a dump
// of the server's schema holds none of it; the space itself is reclaimed by vacuum), and the
// data directory is scanned all the same.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  signupMany, createGroup, openSocket, closeAll, sendMany, uniq,
} from './helpers.mjs';
import {
  startV2Server, onPg, edit, del, react, okAck, sendV2, uploadOk, download, findInFiles, pgDump,
  marker, history, searchSeqs,
} from './v2-helpers.mjs';

let srv;
let a; let b;
before(async () => {
  srv = await startV2Server({ PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0' });
  [a, b] = await signupMany(srv, 2, 'v2er');
});
after(async () => { if (srv) await srv.stop(); });

// What to look for: each marker whole, and its last 16 characters alone (a search index may
// store a term prefix-compressed against its neighbour), and 32-byte pieces of each blob.
function needlesFor(markers, blobs = []) {
  const out = [];
  for (const m of markers) out.push(Buffer.from(m), Buffer.from(m.slice(-16)));
  for (const b of blobs) for (const off of [0, 1000, 2048, b.length - 32]) out.push(b.subarray(off, off + 32));
  return out;
}
const describe = (needles, hits) => hits.map((h) => `${h.path} holds ${JSON.stringify(needles[h.needle].toString('latin1').slice(0, 40))}`).join('; ');

// The places a store keeps data: files under the data directory, plus on PostgreSQL a dump.
function hitsEverywhere(needles) {
  const hits = findInFiles(srv.dataDir, needles);
  if (onPg()) {
    const dump = Buffer.from(pgDump(srv), 'latin1');
    needles.forEach((n, i) => {
      // bytea is dumped as hex
      if (dump.indexOf(n) >= 0 || dump.indexOf(Buffer.from(n.toString('hex'))) >= 0) hits.push({ path: `pg_dump of ${srv.pgSchema}`, needle: i });
    });
  }
  return hits;
}

test('after a delete is acked, no file holds its text, its earlier edited text or its attachment bytes', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    // neighbours before and after, which must survive
    const keep = marker('keep');
    await sendMany(ca, g.id, 3, { body: (i) => `neighbour ${keep} ${i}` });
    const m1 = marker('first');
    const m2 = marker('second');
    const blob = randomBytes(8192);
    const att = await uploadOk(srv, a, blob, { name: 'secret.bin' });
    const sent = await okAck(sendV2(ca, g.id, `the original text ${m1} goes here`, { attachments: [att.id] }), 'send');
    await okAck(edit(ca, g.id, sent.seq, `the edited text ${m2} instead`), 'edit');
    await okAck(react(ca, g.id, sent.seq, '👍'), 'react');
    await sendMany(ca, g.id, 3, { body: (i) => `after ${keep} ${i}` });
    // the search index has it (within a second)
    let found = [];
    for (let i = 0; i < 20 && !found.includes(sent.seq); i++) {
      found = await searchSeqs(srv, b, { q: m2 });
      if (!found.includes(sent.seq)) await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(found, [sent.seq], 'indexed before the delete');

    const needles = needlesFor([m2], [blob]);
    const seen = hitsEverywhere(needles);
    assert.ok(seen.some((h) => h.needle <= 1), `the scan sees the current text before the delete (files: ${describe(needles, seen) || 'none'})`);
    assert.ok(seen.some((h) => h.needle >= 2), 'the scan sees the attachment bytes before the delete');

    const d = await okAck(del(ca, g.id, sent.seq), 'delete');
    // at once after the ack
    const all = needlesFor([m1, m2], [blob]);
    const left = hitsEverywhere(all);
    assert.deepEqual(left, [], `left behind after the delete: ${describe(all, left)}`);

    assert.equal((await download(srv, a, att.id)).status, 404, 'the uploader cannot download it any more');
    assert.deepEqual(await searchSeqs(srv, a, { q: m2 }), [], 'not found by search');
    assert.deepEqual(await searchSeqs(srv, a, { q: m1 }), []);
    const hist = await history(srv, b, g.id);
    assert.equal(hist.length, 7, 'the neighbours are still there');
    const tomb = hist.find((m) => m.seq === sent.seq);
    assert.deepEqual([tomb.deleted, tomb.body, tomb.attachments, tomb.mod], [true, '', undefined, d.mod]);
    const kept = hitsEverywhere([Buffer.from(keep)]);
    assert.ok(kept.length > 0, 'the neighbours\' text is still stored');
  } finally { await closeAll(ca); }
});

test('the same bytes uploaded twice: stored once; gone only when the last message holding them is deleted', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const [ca, cb] = await Promise.all([openSocket(srv, a.token), openSocket(srv, b.token)]);
  try {
    const blob = randomBytes(6000);
    const at1 = await uploadOk(srv, a, blob, { name: 'one.bin' });
    const at2 = await uploadOk(srv, b, blob, { name: 'two.bin' });
    const s1 = await okAck(sendV2(ca, g.id, `first ${uniq('x')}`, { attachments: [at1.id] }));
    const s2 = await okAck(sendV2(cb, g.id, `second ${uniq('x')}`, { attachments: [at2.id] }));
    const needles = needlesFor([], [blob]);
    if (!onPg()) {
      const files = new Set(findInFiles(srv.dataDir, needles).map((h) => h.path));
      assert.equal(files.size, 1, `stored once: ${[...files].join(', ')}`);
    }
    await okAck(del(ca, g.id, s1.seq));
    const still = await download(srv, b, at2.id);
    assert.equal(still.status, 200, 'the other message\'s attachment stays');
    assert.deepEqual(still.bytes, blob);
    assert.equal((await download(srv, a, at1.id)).status, 404);
    await okAck(del(cb, g.id, s2.seq));
    const left = hitsEverywhere(needles);
    assert.deepEqual(left, [], `bytes left after the last delete: ${describe(needles, left)}`);
    assert.equal((await download(srv, b, at2.id)).status, 404);
  } finally { await closeAll(ca, cb); }
});

test('many edits then a delete in one burst: none of the versions is left anywhere', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    // a long body (several KiB: an overflow page in SQLite) with markers, edited 5 times
    const markers = [];
    const pad = 'lorem ipsum dolor sit amet '.repeat(120);
    const first = marker('v0');
    markers.push(first);
    const sent = await okAck(sendV2(ca, g.id, `${first} ${pad}`.slice(0, 4000)), 'send');
    const ps = [];
    for (let i = 1; i <= 5; i++) {
      const m = marker(`v${i}`);
      markers.push(m);
      ps.push(edit(ca, g.id, sent.seq, `${pad.slice(0, 500 * i)} ${m} ${pad}`.slice(0, 4000)));
    }
    ps.push(del(ca, g.id, sent.seq));
    const acks = await Promise.all(ps.map((p) => okAck(p)));
    const needles = needlesFor(markers);
    const left = hitsEverywhere(needles);
    assert.deepEqual(left, [], `left after the delete (acked with mod ${acks.at(-1).mod}): ${describe(needles, left)}`);
  } finally { await closeAll(ca); }
});
