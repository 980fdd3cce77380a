// Version 2: GET /api/search. Every word of q (whole words, case- and accent-insensitive,
// prefix match on the last word), newest first, only in the caller's current conversations
// (or in conv alone: 404 for a conversation the caller is not in), deleted messages never,
// edited ones by their new text only, cursor paging with next/before, limit default 20 and
// at most 100. Deletes leave search at once; new messages, edits and leaving show within a
// second (the contract), so those checks poll for up to 3 s.
// On SQLite by default, on PostgreSQL with PARLEY_E2E_PG_URL (v2-helpers.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  http, signupMany, assertError, createGroup, createDirect, openSocket, closeAll, sendMany, eventually,
} from './helpers.mjs';
import {
  startV2Server, edit, del, okAck, search, searchSeqs, marker,
} from './v2-helpers.mjs';

let srv;
let a; let b; let c;
before(async () => {
  srv = await startV2Server({ PARLEY_SEND_RATE: '0', PARLEY_SEND_BURST: '0' });
  [a, b, c] = await signupMany(srv, 3, 'v2se');
});
after(async () => { if (srv) await srv.stop(); });

// Sends bodies (in order) to conv from conn; resolves their seqs.
async function put(conn, conv, bodies) {
  const acks = await sendMany(conn, conv, bodies.length, { body: (i) => bodies[i] });
  return acks.map((k) => k.seq);
}
// Polls a search until its seqs equal want (sorted as given); asserts at the end.
async function expectSeqs(who, params, want, what) {
  let got;
  await eventually(async () => {
    got = await searchSeqs(srv, who, params);
    return JSON.stringify(got) === JSON.stringify(want);
  }, 3000, 100);
  assert.deepEqual(got, want, `${what}: search ${JSON.stringify(params)}`);
}

test('words: every word must be there, whole words, any order; case-insensitive; prefix on the last word only', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('w');
    const [s1, s2, s3, s4] = await put(ca, g.id, [
      `${t} the quick brown fox jumps`,
      `${t} the lazy dog sleeps`,
      `${t} QUICK thinking, Brown bread.`,
      `${t} foxes and dogs`,
    ]);
    await expectSeqs(b, { q: `${t} quick brown` }, [s3, s1], 'all words, newest first');
    await expectSeqs(b, { q: `${t} brown quick` }, [s3, s1], 'any order');
    await expectSeqs(b, { q: `${t} QuIcK` }, [s3, s1], 'case-insensitive');
    await expectSeqs(b, { q: `${t} quick cat` }, [], 'a word that is not there');
    await expectSeqs(b, { q: `${t} fox` }, [s4, s1], 'prefix on the last word: fox finds foxes');
    await expectSeqs(b, { q: `fox ${t}` }, [s1], 'a word before the last is whole: fox does not find foxes');
    await expectSeqs(b, { q: `${t} bro qu` }, [], 'a word before the last is whole: bro is not brown');
    await expectSeqs(b, { q: `${t} qu` }, [s3, s1], 'last word as a prefix');
    await expectSeqs(b, { q: `${t} rown` }, [], 'no match inside a word');
    await expectSeqs(b, { q: `${t} dog` }, [s4, s2], 'dog: dog and dogs');
    await expectSeqs(b, { q: `${t}, bread.` }, [s3], 'punctuation in q separates words');
    await expectSeqs(b, { q: `  ${t}   sleeps  ` }, [s2], 'extra spaces');
    // results carry the contract's fields
    const r = await search(srv, b, { q: `${t} lazy` });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.results.length, 1);
    const hit = r.body.results[0];
    for (const k of ['conv', 'seq', 'from', 'body', 'ts']) assert.ok(k in hit, `result has ${k}`);
    assert.deepEqual([hit.conv, hit.seq, hit.from, hit.body], [g.id, s2, a.user.id, `${t} the lazy dog sleeps`]);
    assert.ok(Number.isSafeInteger(hit.ts));
    assert.equal(r.body.next, null, 'one page: next is null');
  } finally { await closeAll(ca); }
});

test('accents: café, cafe, CAFÉ and Café find each other; numbers are words', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('acc');
    const [s1, s2, s3, s4, s5] = await put(ca, g.id, [
      `${t} un café au lait`,
      `${t} a cafe downtown`,
      `${t} CAFÉ NOIR`,
      `${t} Ærø ÉLAN naïve Straße`,
      `${t} order 12345`,
    ]);
    for (const q of ['café', 'cafe', 'CAFE', 'Café', 'CAFÉ']) await expectSeqs(b, { q: `${t} ${q}` }, [s3, s2, s1], q);
    await expectSeqs(b, { q: `${t} elan` }, [s4], 'É is E');
    await expectSeqs(b, { q: `${t} naive` }, [s4], 'ï is i');
    await expectSeqs(b, { q: `${t} noir` }, [s3]);
    await expectSeqs(b, { q: `${t} 12345` }, [s5], 'numbers are words');
    await expectSeqs(b, { q: `${t} 1234` }, [s5], 'a prefix of a number');
  } finally { await closeAll(ca); }
});

test('case beyond ASCII: Cyrillic and Greek capitals find lower case and back', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('uc');
    const [s1, s2] = await put(ca, g.id, [`${t} встреча в москве`, `${t} ΚΑΛΗΜΕΡΑ ΚΟΣΜΕ`]);
    await expectSeqs(b, { q: `${t} МОСКВЕ` }, [s1], 'Cyrillic capitals');
    await expectSeqs(b, { q: `${t} Встреча` }, [s1], 'Cyrillic mixed case');
    await expectSeqs(b, { q: `${t} καλημερα` }, [s2], 'Greek lower case');
  } finally { await closeAll(ca); }
});

test('permissions: other users\' conversations are never found; after leaving a group its messages are not', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const priv = await createDirect(srv, a, c.user.id);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('perm');
    const [sg] = await put(ca, g.id, [`${t} shared with b`]);
    const [sp] = await put(ca, priv.id, [`${t} between a and c only`]);
    await expectSeqs(a, { q: t }, [sp, sg], 'a finds both');
    await expectSeqs(b, { q: t }, [sg], 'b finds only the group');
    await expectSeqs(c, { q: t }, [sp], 'c finds only the direct conversation');
    const r = await search(srv, b, { q: t });
    assert.deepEqual(r.body.results.map((x) => x.conv), [g.id]);
    // b leaves: within a second, nothing
    const left = await http(srv, 'DELETE', `/api/conversations/${g.id}/members/${b.user.id}`, { token: b.token });
    assert.equal(left.status, 204, left.text);
    await expectSeqs(b, { q: t }, [], 'after leaving');
    assertError(await search(srv, b, { q: t, conv: g.id }), 404, 'conv filter on a conversation left');
    // added back: found again (current membership decides)
    const back = await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: a.token, body: { user_id: b.user.id } });
    assert.equal(back.status, 204, back.text);
    await expectSeqs(b, { q: t }, [sg], 'a member again');
  } finally { await closeAll(ca); }
});

test('after an edit: found by the new text only; after a delete: never, at once', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('ed');
    const oldW = marker('old');
    const newW = marker('new');
    const [s1, s2] = await put(ca, g.id, [`${t} ${oldW} text`, `${t} ${oldW} stays`]);
    await expectSeqs(b, { q: oldW }, [s2, s1], 'before the edit');
    await okAck(edit(ca, g.id, s1, `${t} ${newW} text`));
    await expectSeqs(b, { q: newW }, [s1], 'the new text');
    await expectSeqs(b, { q: oldW }, [s2], 'not the old text');
    const r = await search(srv, b, { q: newW });
    assert.equal(r.body.results[0].body, `${t} ${newW} text`, 'the result shows the current body');
    // delete: at once (no polling)
    await okAck(del(ca, g.id, s2));
    assert.deepEqual(await searchSeqs(srv, b, { q: oldW }), [], 'a deleted message is gone from search at once');
    assert.deepEqual(await searchSeqs(srv, a, { q: t }), [s1]);
    await okAck(del(ca, g.id, s1));
    assert.deepEqual(await searchSeqs(srv, a, { q: t }), []);
    assert.deepEqual(await searchSeqs(srv, a, { q: newW }), []);
  } finally { await closeAll(ca); }
});

test('conv filter: only that conversation; 404 for a conversation the caller is not in or that does not exist', async () => {
  const g1 = await createGroup(srv, a, [b.user.id]);
  const g2 = await createGroup(srv, a, [b.user.id]);
  const g3 = await createGroup(srv, c, []);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('cf');
    const [x1] = await put(ca, g1.id, [`${t} one`]);
    const [x2] = await put(ca, g2.id, [`${t} two`]);
    await expectSeqs(b, { q: t, conv: g1.id }, [x1], 'conv 1');
    await expectSeqs(b, { q: t, conv: g2.id }, [x2], 'conv 2');
    const both = await search(srv, b, { q: t });
    assert.deepEqual(both.body.results.map((r) => r.conv), [g2.id, g1.id], 'without conv: both, newest first');
    assertError(await search(srv, b, { q: t, conv: g3.id }), 404, 'a conversation b is not in');
    assertError(await search(srv, b, { q: t, conv: 987654321 }), 404, 'no such conversation');
    assertError(await search(srv, b, { q: t, conv: 'abc' }), 400, 'conv not a number');
  } finally { await closeAll(ca); }
});

test('paging: limit, next passed back as before, null on the last page; limit default 20, clamp 100; errors', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const g2 = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('pg');
    // 130 matches over two conversations, interleaved
    const seqs = [];
    for (let i = 0; i < 13; i++) {
      for (const conv of [g.id, g2.id]) {
        const s = await put(ca, conv, Array.from({ length: 5 }, (_, j) => `${t} item ${i}-${j}`));
        seqs.push(...s.map((seq) => `${conv}/${seq}`));
      }
    }
    assert.equal(seqs.length, 130);
    await eventually(async () => (await search(srv, b, { q: t, limit: 100 })).body?.results?.length === 100, 3000, 100);
    const def = await search(srv, b, { q: t });
    assert.equal(def.status, 200, def.text);
    assert.equal(def.body.results.length, 20, 'limit defaults to 20');
    assert.ok(def.body.next !== null && def.body.next !== undefined, 'more pages: next is set');
    const big = await search(srv, b, { q: t, limit: 1000 });
    assert.equal(big.status, 200, big.text);
    assert.equal(big.body.results.length, 100, 'limit is at most 100');

    // page through with limit 30: every match exactly once, newest first
    const got = [];
    let cursor;
    let pages = 0;
    for (;;) {
      const r = await search(srv, b, { q: t, limit: 30, before: cursor });
      assert.equal(r.status, 200, r.text);
      pages += 1;
      got.push(...r.body.results);
      if (r.body.next === null) break;
      assert.ok(r.body.results.length === 30, 'a full page before the last');
      cursor = r.body.next;
      assert.ok(pages < 10, 'paging ends');
    }
    assert.equal(pages, 5, '30+30+30+30+10');
    const keys = got.map((r) => `${r.conv}/${r.seq}`);
    assert.equal(new Set(keys).size, 130, 'no match twice');
    assert.deepEqual([...keys].sort(), [...seqs].sort(), 'every match');
    for (let i = 1; i < got.length; i++) {
      assert.ok(got[i].ts <= got[i - 1].ts, `newest first at ${i}`);
      if (got[i].conv === got[i - 1].conv) assert.ok(got[i].seq < got[i - 1].seq, `seq order within a conversation at ${i}`);
    }
    // paging within one conversation
    const one = [];
    cursor = undefined;
    for (let i = 0; i < 10; i++) {
      const r = await search(srv, b, { q: t, conv: g.id, limit: 40, before: cursor });
      one.push(...r.body.results.map((x) => x.seq));
      if (r.body.next === null) break;
      cursor = r.body.next;
    }
    assert.equal(one.length, 65);
    assert.deepEqual(one, [...one].sort((p, q) => q - p));

    assertError(await search(srv, b, { q: t, limit: 0 }), 400, 'limit 0');
    assertError(await search(srv, b, { q: t, limit: 'many' }), 400, 'limit not a number');
    assertError(await search(srv, b, {}), 400, 'no q');
    assertError(await search(srv, b, { q: '' }), 400, 'empty q');
    assert.equal((await http(srv, 'GET', `/api/search?q=${t}`)).status, 401, 'no token');
  } finally { await closeAll(ca); }
});

test('deleting many in a burst: a search right after the last ack finds only the others', async () => {
  const g = await createGroup(srv, a, [b.user.id]);
  const ca = await openSocket(srv, a.token);
  try {
    const t = marker('busy');
    const seqs = await put(ca, g.id, Array.from({ length: 50 }, (_, i) => `${t} n${i}`));
    await eventually(async () => (await searchSeqs(srv, b, { q: t, limit: 100 })).length === 50, 3000, 100);
    // delete every other one in a burst; search right after the last ack
    const acks = await Promise.all(seqs.filter((_, i) => i % 2 === 0).map((s) => okAck(del(ca, g.id, s))));
    assert.equal(acks.length, 25);
    const left = await searchSeqs(srv, b, { q: t, limit: 100 });
    assert.deepEqual(left, seqs.filter((_, i) => i % 2 === 1).reverse());
  } finally { await closeAll(ca); }
});
