// Users and conversations: user search, direct and group conversations, listing order,
// membership (add, remove, leave, ownership hand-over) and the member-only rule.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import {
  startServer, http, signup, signupMany, uniq, assertError, assertUser, assertConversation, createGroup,
  createDirect, getConv, postMessage, openSocket, closeAll, eventually, roleOf, sleep, sendMany,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer(); });
after(async () => { if (srv) await srv.stop(); });

// -------------------------------------------------------------- users
test('users: search by prefix, limit, online flag', async () => {
  const prefix = uniq('srch').slice(0, 12);
  const [a1, a2, a3] = [
    await signup(srv, { username: `${prefix}_a1` }),
    await signup(srv, { username: `${prefix}_a2` }),
    await signup(srv, { username: `${prefix}_a3` }),
  ];
  const b = await signup(srv, { username: `${prefix}_b1` });
  const other = await signup(srv, { prefix: 'zz' });

  const all = await http(srv, 'GET', `/api/users?q=${prefix}_a`, { token: other.token });
  assert.equal(all.status, 200, all.text);
  assert.ok(Array.isArray(all.body.users));
  const names = all.body.users.map((u) => u.username).sort();
  assert.deepEqual(names, [a1, a2, a3].map((s) => s.user.username).sort(), 'exactly the users with that prefix');
  for (const u of all.body.users) {
    assertUser(u);
    assert.equal(typeof u.online, 'boolean');
  }

  const wider = await http(srv, 'GET', `/api/users?q=${prefix}`, { token: other.token });
  assert.equal(wider.body.users.length, 4);
  assert.ok(wider.body.users.some((u) => u.id === b.user.id));

  const upper = await http(srv, 'GET', `/api/users?q=${prefix.toUpperCase()}_A`, { token: other.token });
  assert.equal(upper.status, 200);

  const limited = await http(srv, 'GET', `/api/users?q=${prefix}_a&limit=2`, { token: other.token });
  assert.equal(limited.status, 200, limited.text);
  assert.equal(limited.body.users.length, 2);
  for (const u of limited.body.users) assert.ok(u.username.startsWith(`${prefix}_a`));

  const none = await http(srv, 'GET', `/api/users?q=${prefix}_nomatch`, { token: other.token });
  assert.deepEqual(none.body.users, []);

  assertError(await http(srv, 'GET', `/api/users?q=${prefix}&limit=0`, { token: other.token }), 400, 'limit=0');
  assertError(await http(srv, 'GET', `/api/users?q=${prefix}`), 401, 'no token');

  // online: true while a1 has an open socket, false for the others
  await createDirect(srv, other, a1.user.id); // so that other is told when a1 goes offline
  const watcher = await openSocket(srv, other.token);
  const conn = await openSocket(srv, a1.token);
  try {
    await watcher.next((f) => f.op === 'presence' && f.user === a1.user.id && f.online === true);
    const res = await http(srv, 'GET', `/api/users?q=${prefix}_a`, { token: other.token });
    const byId = new Map(res.body.users.map((u) => [u.id, u]));
    assert.equal(byId.get(a1.user.id).online, true, 'user with an open socket is online');
    assert.equal(byId.get(a2.user.id).online, false);
    assert.equal(byId.get(a3.user.id).online, false);
    await conn.close();
    // the offline presence frame goes out once the server has let the connection go
    await watcher.next((f) => f.op === 'presence' && f.user === a1.user.id && f.online === false);
    const r = await http(srv, 'GET', `/api/users?q=${a1.user.username}`, { token: other.token });
    assert.equal(r.body.users[0].online, false, 'online is false once the offline presence is out');
  } finally { await closeAll(conn, watcher); }
});

test('users: a page is 50 by default and 200 at most; limit below 1 or not an integer is 400', async () => {
  const prefix = uniq('pg').slice(0, 10);
  const names = [...Array(205)].map((_, i) => `${prefix}_${String(i).padStart(3, '0')}`);
  // 205 signups would be 205 argon2id hashes (a minute on a busy machine): the accounts
  // are written straight into the embedded database instead (WAL: next to the running
  // server), since what is tested is the paging of the search, not signup
  const now = Date.now();
  const rows = names.map((n) => `('${n}', '${n}', 'not-a-hash', ${now})`).join(',');
  execFileSync('sqlite3', ['-cmd', '.timeout 10000', path.join(srv.dataDir, 'parley.db'),
    `INSERT INTO users (username, display_name, password_hash, created_at) VALUES ${rows}`]);
  const me = await signup(srv, { prefix: 'zz' });
  const page = async (q) => {
    const r = await http(srv, 'GET', `/api/users?q=${prefix}${q}`, { token: me.token });
    assert.equal(r.status, 200, `${q}: ${r.text}`);
    for (const u of r.body.users) assertUser({ ...u, online: undefined }, `user of ${q}`);
    return r.body.users.map((u) => u.username);
  };
  assert.deepEqual(await page(''), names.slice(0, 50), 'no limit: the first 50 by username');
  assert.deepEqual(await page('&limit=1'), names.slice(0, 1));
  assert.deepEqual(await page('&limit=200'), names.slice(0, 200));
  assert.deepEqual(await page('&limit=201'), names.slice(0, 200), 'clamped to 200');
  assert.deepEqual(await page('&limit=100000'), names.slice(0, 200), 'clamped to 200');
  assert.deepEqual(await page('_20&limit=200'), names.slice(200), 'the rest, by a longer prefix');
  for (const bad of ['0', '-1', 'abc', '1.5', '']) {
    const r = await http(srv, 'GET', `/api/users?q=${prefix}&limit=${bad}`, { token: me.token });
    assertError(r, 400, `limit=${bad}`);
    assert.equal(r.body.error.message, 'limit must be a positive integer', `limit=${bad}`);
  }
});

// -------------------------------------------------------------- direct
test('direct: 201 then 200 with the same conversation, in either order of the pair', async () => {
  const [a, b] = await signupMany(srv, 2, 'dir');
  const r1 = await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'direct', user_id: b.user.id } });
  assert.equal(r1.status, 201, r1.text);
  assertConversation(r1.body);
  assert.equal(r1.body.kind, 'direct');
  assert.equal(r1.body.title, null);
  assert.deepEqual(r1.body.members.map((m) => m.id).sort((x, y) => x - y), [a.user.id, b.user.id].sort((x, y) => x - y));
  assert.equal(r1.body.last_seq, 0);
  assert.equal(r1.body.unread, 0);
  assert.equal(r1.body.last_message, null);

  const r2 = await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'direct', user_id: b.user.id } });
  assert.equal(r2.status, 200, r2.text);
  assert.equal(r2.body.id, r1.body.id);
  const r3 = await http(srv, 'POST', '/api/conversations', { token: b.token, body: { kind: 'direct', user_id: a.user.id } });
  assert.equal(r3.status, 200, r3.text);
  assert.equal(r3.body.id, r1.body.id);
  assertConversation(r3.body);
});

test('direct: unknown user 404, bad user_id / kind / JSON 400', async () => {
  const a = await signup(srv, { prefix: 'dir' });
  assertError(await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'direct', user_id: 987654321 } }), 404, 'unknown user');
  assertError(await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'direct', user_id: 'x' } }), 400, 'string user_id');
  assertError(await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'direct' } }), 400, 'missing user_id');
  assertError(await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'channel', title: 'x' } }), 400, 'unknown kind');
  assertError(await http(srv, 'POST', '/api/conversations', { token: a.token, raw: '{"kind":"direct",' }), 400, 'malformed JSON');
  assertError(await http(srv, 'POST', '/api/conversations', { token: a.token, raw: '"group"' }), 400, 'JSON string body');
  assertError(await http(srv, 'POST', '/api/conversations', { body: { kind: 'direct', user_id: a.user.id } }), 401, 'no token');
});

// -------------------------------------------------------------- group
test('group: 201, creator is owner and member, others are members', async () => {
  const [o, m1, m2] = await signupMany(srv, 3, 'grp');
  const title = 'Team ✨ ' + uniq('');
  const res = await http(srv, 'POST', '/api/conversations', {
    token: o.token, body: { kind: 'group', title, members: [m1.user.id, m2.user.id] },
  });
  assert.equal(res.status, 201, res.text);
  const c = res.body;
  assertConversation(c);
  assert.equal(c.kind, 'group');
  assert.equal(c.title, title);
  assert.equal(c.members.length, 3);
  assert.equal(roleOf(c, o.user.id), 'owner');
  assert.equal(roleOf(c, m1.user.id), 'member');
  assert.equal(roleOf(c, m2.user.id), 'member');
  const m = c.members.find((x) => x.id === m1.user.id);
  assert.equal(m.username, m1.user.username);
  assert.equal(m.display_name, m1.user.display_name);

  const seen = await getConv(srv, m2, c.id);
  assert.equal(seen.id, c.id);
  assert.equal(seen.title, title);
});

test('group: bad title 400, unknown member 404', async () => {
  const [o, m] = await signupMany(srv, 2, 'grp');
  const mk = (body) => http(srv, 'POST', '/api/conversations', { token: o.token, body: { kind: 'group', ...body } });
  assertError(await mk({ title: '', members: [m.user.id] }), 400, 'empty title');
  assertError(await mk({ title: 't'.repeat(129), members: [m.user.id] }), 400, 'title of 129 characters');
  assertError(await mk({ members: [m.user.id] }), 400, 'missing title');
  assertError(await mk({ title: 42, members: [m.user.id] }), 400, 'numeric title');
  assertError(await mk({ title: 'ok', members: 'nope' }), 400, 'members not an array');
  assertError(await mk({ title: 'ok', members: [m.user.id, 987654321] }), 404, 'unknown member id');
  const ok = await mk({ title: 't'.repeat(128), members: [m.user.id] });
  assert.equal(ok.status, 201, `title of 128 characters: ${ok.text}`);
});

test('list: most recent activity first; get; unknown id 404', async () => {
  const [a, b] = await signupMany(srv, 2, 'lst');
  const c1 = await createGroup(srv, a, [b.user.id], 'one');
  await sleep(15);
  const c2 = await createGroup(srv, a, [b.user.id], 'two');
  await sleep(15);
  const c3 = await createGroup(srv, a, [b.user.id], 'three');
  await sleep(15);

  let list = await http(srv, 'GET', '/api/conversations', { token: a.token });
  assert.equal(list.status, 200, list.text);
  assert.deepEqual(list.body.conversations.map((c) => c.id), [c3.id, c2.id, c1.id], 'newest conversation first');
  for (const c of list.body.conversations) assertConversation(c);

  await postMessage(srv, b, c1.id, 'bump one');
  await sleep(15);
  list = await http(srv, 'GET', '/api/conversations', { token: a.token });
  assert.deepEqual(list.body.conversations.map((c) => c.id), [c1.id, c3.id, c2.id], 'a message moves a conversation to the top');
  await postMessage(srv, a, c2.id, 'bump two');
  list = await http(srv, 'GET', '/api/conversations', { token: b.token });
  assert.deepEqual(list.body.conversations.map((c) => c.id), [c2.id, c1.id, c3.id]);
  const top = list.body.conversations[0];
  assert.equal(top.last_seq, 1);
  assert.equal(top.unread, 1, "b has not read a's message");
  assert.equal(top.last_read_seq, 0);
  assert.equal(top.last_message.body, 'bump two');
  assert.equal(top.last_message.from, a.user.id);

  const one = await getConv(srv, a, c1.id);
  assertConversation(one);
  assert.equal(one.title, 'one');
  assert.equal(one.last_seq, 1);
  assert.equal(one.last_message.body, 'bump one');

  assertError(await http(srv, 'GET', '/api/conversations/987654321', { token: a.token }), 404, 'unknown conversation');
  assertError(await http(srv, 'GET', '/api/conversations', {}), 401, 'list without token');
  const fresh = await signup(srv, { prefix: 'lst' });
  const empty = await http(srv, 'GET', '/api/conversations', { token: fresh.token });
  assert.deepEqual(empty.body.conversations, []);
});

test('non-members get 404 on get, messages, send and members', async () => {
  const [a, b, x] = await signupMany(srv, 3, 'priv');
  const g = await createGroup(srv, a, [b.user.id]);
  await postMessage(srv, a, g.id, 'secret');
  const d = await createDirect(srv, a, b.user.id);
  for (const c of [g, d]) {
    const p = `/api/conversations/${c.id}`;
    assertError(await http(srv, 'GET', p, { token: x.token }), 404, `get ${c.kind}`);
    assertError(await http(srv, 'GET', `${p}/messages`, { token: x.token }), 404, `messages ${c.kind}`);
    assertError(await http(srv, 'GET', `${p}/messages?after=0`, { token: x.token }), 404, `messages after ${c.kind}`);
    assertError(await http(srv, 'POST', `${p}/messages`, { token: x.token, body: { id: uniq('m'), body: 'hi' } }), 404, `send ${c.kind}`);
    assertError(await http(srv, 'POST', `${p}/members`, { token: x.token, body: { user_id: x.user.id } }), 404, `add member ${c.kind}`);
    assertError(await http(srv, 'DELETE', `${p}/members/${b.user.id}`, { token: x.token }), 404, `remove member ${c.kind}`);
    assertError(await http(srv, 'DELETE', `${p}/members/${x.user.id}`, { token: x.token }), 404, `leave ${c.kind}`);
  }
  // the 404 for an existing conversation looks like the 404 for a missing one
  const missing = await http(srv, 'GET', '/api/conversations/987654321', { token: x.token });
  const hidden = await http(srv, 'GET', `/api/conversations/${g.id}`, { token: x.token });
  assert.deepEqual(hidden.body, missing.body, 'no existence leak');
  const list = await http(srv, 'GET', '/api/conversations', { token: x.token });
  assert.deepEqual(list.body.conversations, []);
});

// -------------------------------------------------------------- members
test('members: owner adds (204), adding again 204, added member sees it and gets a conversation frame', async () => {
  const [o, m, n] = await signupMany(srv, 3, 'add');
  const g = await createGroup(srv, o, [m.user.id]);
  const nConn = await openSocket(srv, n.token);
  try {
    const res = await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: o.token, body: { user_id: n.user.id } });
    assert.equal(res.status, 204, res.text);
    assert.equal(res.text, '');
    const f = await nConn.next((x) => x.op === 'conversation' && x.conversation && x.conversation.id === g.id, 5000);
    assertConversation(f.conversation, 'conversation frame');
    assert.ok(f.conversation.members.some((x) => x.id === n.user.id), 'the new member is in the frame');
    assert.equal(f.conversation.kind, 'group');

    const again = await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: o.token, body: { user_id: n.user.id } });
    assert.equal(again.status, 204, `adding a member again: ${again.text}`);
    const c = await getConv(srv, n, g.id);
    assert.equal(c.members.length, 3);
    assert.equal(c.members.filter((x) => x.id === n.user.id).length, 1);
    assert.equal(roleOf(c, n.user.id), 'member');

    // the new member receives messages of the conversation on the open socket
    await postMessage(srv, o, g.id, 'welcome');
    const msg = await nConn.next((x) => x.op === 'msg' && x.conv === g.id, 5000);
    assert.equal(msg.body, 'welcome');
  } finally { await nConn.close(); }
});

test('members: a plain member cannot add (403); unknown user 404; bad body 400', async () => {
  const [o, m, n] = await signupMany(srv, 3, 'add');
  const g = await createGroup(srv, o, [m.user.id]);
  const p = `/api/conversations/${g.id}/members`;
  assertError(await http(srv, 'POST', p, { token: m.token, body: { user_id: n.user.id } }), 403, 'member adds');
  assertError(await http(srv, 'POST', p, { token: o.token, body: { user_id: 987654321 } }), 404, 'unknown user');
  assertError(await http(srv, 'POST', p, { token: o.token, body: { user_id: 'abc' } }), 400, 'string user_id');
  assertError(await http(srv, 'POST', p, { token: o.token, raw: '{' }), 400, 'malformed JSON');
  assertError(await http(srv, 'POST', p, { body: { user_id: n.user.id } }), 401, 'no token');
  const c = await getConv(srv, o, g.id);
  assert.equal(c.members.length, 2, 'nobody was added');
});

test('members: adding to or leaving a direct conversation is 400', async () => {
  const [a, b, c] = await signupMany(srv, 3, 'dm');
  const d = await createDirect(srv, a, b.user.id);
  assertError(await http(srv, 'POST', `/api/conversations/${d.id}/members`, { token: a.token, body: { user_id: c.user.id } }), 400, 'add to direct');
  assertError(await http(srv, 'DELETE', `/api/conversations/${d.id}/members/${a.user.id}`, { token: a.token }), 400, 'leave direct');
  const still = await getConv(srv, a, d.id);
  assert.equal(still.members.length, 2);
});

test('members: owner removes a member (204); a plain member cannot remove (403); removed member gets 404', async () => {
  const [o, m1, m2] = await signupMany(srv, 3, 'rm');
  const g = await createGroup(srv, o, [m1.user.id, m2.user.id]);
  assertError(await http(srv, 'DELETE', `/api/conversations/${g.id}/members/${m2.user.id}`, { token: m1.token }), 403, 'member removes member');
  assertError(await http(srv, 'DELETE', `/api/conversations/${g.id}/members/${o.user.id}`, { token: m1.token }), 403, 'member removes owner');
  const res = await http(srv, 'DELETE', `/api/conversations/${g.id}/members/${m2.user.id}`, { token: o.token });
  assert.equal(res.status, 204, res.text);
  assertError(await http(srv, 'GET', `/api/conversations/${g.id}`, { token: m2.token }), 404, 'removed member reads');
  assertError(await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: m2.token, body: { id: uniq('m'), body: 'x' } }), 404, 'removed member writes');
  const c = await getConv(srv, o, g.id);
  assert.deepEqual(c.members.map((x) => x.id).sort((a, b) => a - b), [o.user.id, m1.user.id].sort((a, b) => a - b));
  const list = await http(srv, 'GET', '/api/conversations', { token: m2.token });
  assert.ok(!list.body.conversations.some((x) => x.id === g.id), 'gone from the removed member\'s list');
});

test('members: a member leaves (204) and then gets 404', async () => {
  const [o, m1, m2] = await signupMany(srv, 3, 'lv');
  const g = await createGroup(srv, o, [m1.user.id, m2.user.id]);
  const res = await http(srv, 'DELETE', `/api/conversations/${g.id}/members/${m1.user.id}`, { token: m1.token });
  assert.equal(res.status, 204, res.text);
  assertError(await http(srv, 'GET', `/api/conversations/${g.id}`, { token: m1.token }), 404, 'after leaving');
  assertError(await http(srv, 'GET', `/api/conversations/${g.id}/messages`, { token: m1.token }), 404, 'history after leaving');
  const c = await getConv(srv, o, g.id);
  assert.equal(c.members.length, 2);
  assert.ok(!c.members.some((x) => x.id === m1.user.id));
});

test('members: when the owner leaves, the longest-standing member becomes owner', async () => {
  const [o, first, second, extra] = await signupMany(srv, 4, 'own');
  const g = await createGroup(srv, o, [first.user.id]);
  await sleep(20);
  const add = await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: o.token, body: { user_id: second.user.id } });
  assert.equal(add.status, 204);
  assertError(await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: first.token, body: { user_id: extra.user.id } }), 403, 'not yet owner');

  const leave = await http(srv, 'DELETE', `/api/conversations/${g.id}/members/${o.user.id}`, { token: o.token });
  assert.equal(leave.status, 204, leave.text);
  const c = await getConv(srv, first, g.id);
  assert.equal(c.members.length, 2);
  assert.equal(roleOf(c, first.user.id), 'owner', 'the member who joined first is the new owner');
  assert.equal(roleOf(c, second.user.id), 'member');
  assert.equal(c.members.filter((x) => x.role === 'owner').length, 1, 'exactly one owner');
  // and has the owner's powers
  const ok = await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: first.token, body: { user_id: extra.user.id } });
  assert.equal(ok.status, 204, ok.text);
  assertError(await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: second.token, body: { user_id: o.user.id } }), 403, 'plain member still cannot add');
  assertError(await http(srv, 'GET', `/api/conversations/${g.id}`, { token: o.token }), 404, 'former owner is out');
});

test('members: a conversation frame reaches existing members when the group changes', async () => {
  const [o, m, n] = await signupMany(srv, 3, 'chg');
  const g = await createGroup(srv, o, [m.user.id]);
  const mConn = await openSocket(srv, m.token);
  try {
    const res = await http(srv, 'POST', `/api/conversations/${g.id}/members`, { token: o.token, body: { user_id: n.user.id } });
    assert.equal(res.status, 204);
    const f = await mConn.next((x) => x.op === 'conversation' && x.conversation && x.conversation.id === g.id, 5000);
    assert.ok(f.conversation.members.some((x) => x.id === n.user.id));
  } finally { await mConn.close(); }
});

// -------------------------------------------------------------- limits on list routes
test('limit: 0 is 400, 500 is clamped to 200, default 50', async () => {
  const [a, b] = await signupMany(srv, 2, 'lim');
  const g = await createGroup(srv, a, [b.user.id]);
  const conn = await openSocket(srv, a.token);
  try { await sendMany(conn, g.id, 230); } finally { await conn.close(); }
  const base = `/api/conversations/${g.id}/messages`;
  assertError(await http(srv, 'GET', `${base}?limit=0`, { token: a.token }), 400, 'limit=0');
  assertError(await http(srv, 'GET', `${base}?limit=-5`, { token: a.token }), 400, 'limit=-5');
  const big = await http(srv, 'GET', `${base}?limit=500`, { token: a.token });
  assert.equal(big.status, 200, big.text);
  assert.equal(big.body.messages.length, 200, 'clamped to 200');
  assert.equal(big.body.has_more, true);
  assert.equal(big.body.messages[0].seq, 230);
  const dflt = await http(srv, 'GET', base, { token: a.token });
  assert.equal(dflt.body.messages.length, 50, 'default limit 50');
  assert.equal(dflt.body.has_more, true);
  const after = await http(srv, 'GET', `${base}?after=0&limit=500`, { token: a.token });
  assert.equal(after.body.messages.length, 200);
  assert.equal(after.body.messages[0].seq, 1);
  assert.equal(after.body.has_more, true);
});
