// Admission (issue 8, items 3 and 6): failed logins back off per account and per source
// address (429 + Retry-After, doubling), a success forgives the account; password hashes wait
// in a bounded queue that serves source addresses in turn, so a flood from one address cannot
// keep a real user out; signups, conversation creation and open connections are limited per
// source address. Clients use 127.0.0.x local addresses: each is a different source to the server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startServer, http, signup, uniq, assertError } from './helpers.mjs';
import { httpFrom, sleep } from './abuse.mjs';

const login = (srv, username, password, from = '127.0.0.1') =>
  httpFrom(srv, from, 'POST', '/api/auth/login', { body: { username, password } });

function retryAfter(res) {
  const v = res.headers['retry-after'];
  assert.ok(v !== undefined && /^\d+$/.test(v), `Retry-After: ${v}`);
  return Number(v);
}

test('login: failures back off per account (429, Retry-After doubling); a success forgives the account', async () => {
  const srv = await startServer({ PARLEY_LOGIN_FAILS: '3' });
  try {
    const u = await signup(srv);
    for (let i = 0; i < 4; i++) assertError(await http(srv, 'POST', '/api/auth/login', { body: { username: u.user.username, password: 'wrong-password' } }), 401, `wrong #${i + 1}`);
    // the 4th failure blocked the account for 1 s: the right password is not even tried
    const blocked = await login(srv, u.user.username, u.password);
    assert.equal(blocked.status, 429, blocked.text);
    assert.equal(blocked.body.error.code, 'rate_limited');
    assert.equal(retryAfter(blocked), 1);
    // from another address too: it is the account that is blocked
    assert.equal((await login(srv, u.user.username, u.password, '127.0.0.2')).status, 429);
    await sleep(retryAfter(blocked) * 1000); // what the server said to wait
    assertError(await http(srv, 'POST', '/api/auth/login', { body: { username: u.user.username, password: 'wrong-again' } }), 401);
    const longer = await login(srv, u.user.username, u.password);
    assert.equal(longer.status, 429);
    assert.equal(retryAfter(longer), 2, 'the block doubles');
    await sleep(retryAfter(longer) * 1000);
    const ok = await login(srv, u.user.username.toUpperCase(), u.password);
    assert.equal(ok.status, 200, ok.text);
    // forgiven: three free failures again
    for (let i = 0; i < 3; i++) assertError(await http(srv, 'POST', '/api/auth/login', { body: { username: u.user.username, password: 'nope-nope' } }), 401);
    assert.equal((await login(srv, u.user.username, u.password)).status, 200);
    // another account is not affected by any of it
    const v = await signup(srv);
    assert.equal((await login(srv, v.user.username, v.password)).status, 200);
  } finally { await srv.stop(); }
});

test('login: failures back off per source address, across accounts and unknown names', async () => {
  const srv = await startServer({ PARLEY_LOGIN_FAILS: '2' }); // 8 per address
  try {
    const u = await signup(srv);
    for (let i = 0; i < 9; i++) {
      const r = await login(srv, `nobody${i}x`, 'wrong-password', '127.0.0.2');
      assert.equal(r.status, 401, `guess #${i + 1}: ${r.text}`);
    }
    const blocked = await login(srv, u.user.username, u.password, '127.0.0.2');
    assert.equal(blocked.status, 429, blocked.text);
    assert.ok(retryAfter(blocked) >= 1);
    // the account itself is fine from elsewhere
    assert.equal((await login(srv, u.user.username, u.password, '127.0.0.3')).status, 200);
  } finally { await srv.stop(); }
});

test('password hashing: a flood of logins from one address queues behind itself; a real user from another gets in', async () => {
  const srv = await startServer({
    PARLEY_MAX_HASHES: '1', PARLEY_HASH_QUEUE: '6', PARLEY_HASH_WAIT_MS: '20000', PARLEY_LOGIN_FAILS: '0',
  });
  const statuses = new Map();
  let stop = false;
  const flooders = [];
  let first503;
  const refused = new Promise((resolve) => { first503 = resolve; });
  try {
    const real = await signup(srv);
    // 24 looping bogus logins from one address: always more than the queue holds
    for (let k = 0; k < 24; k++) {
      flooders.push((async () => {
        while (!stop) {
          const r = await login(srv, `flood${k}`, 'wrong-password', '127.0.0.2').catch(() => ({ status: 0 }));
          statuses.set(r.status, (statuses.get(r.status) || 0) + 1);
          if (r.status === 503) { first503(); await sleep(20); }
        }
      })());
    }
    // the flood holds every slot and fills the queue: it is being refused
    let timer;
    await Promise.race([refused, new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`the flood was never refused: ${JSON.stringify([...statuses])}`)), 20000); })])
      .finally(() => clearTimeout(timer));
    for (let i = 0; i < 3; i++) {
      const r = await login(srv, real.user.username, real.password, '127.0.0.3');
      assert.equal(r.status, 200, `the real user, attempt ${i + 1}: ${r.text}`);
    }
    assert.ok(statuses.get(503) > 0, 'the flood is refused beyond the queue');
  } finally {
    stop = true;
    await Promise.all(flooders);
    await srv.stop();
  }
});

test('password hashing: a request that finds no place in the queue gets 503 unavailable with Retry-After: 1', async () => {
  // one hash at a time and one place to wait: of eight logins at once, at most two are held
  const srv = await startServer({ PARLEY_MAX_HASHES: '1', PARLEY_HASH_QUEUE: '1', PARLEY_HASH_WAIT_MS: '20000', PARLEY_LOGIN_FAILS: '0' });
  try {
    const u = await signup(srv);
    const all = await Promise.all([...Array(8)].map((_, i) => login(srv, `nobody${i}y`, 'wrong-password', '127.0.0.2')));
    const busy = all.filter((r) => r.status === 503);
    assert.ok(busy.length >= 1, `no place for some: ${all.map((r) => r.status)}`);
    for (const r of all) assert.ok(r.status === 401 || r.status === 503, `${r.status} ${r.text}`);
    for (const r of busy) {
      assert.deepEqual(r.body, { error: { code: 'unavailable', message: 'too many logins at once; retry shortly' } });
      assert.equal(r.headers['retry-after'], '1');
    }
    // once the queue has room again, the real user gets in
    assert.equal((await login(srv, u.user.username, u.password, '127.0.0.3')).status, 200);
  } finally { await srv.stop(); }
});

test('signups: limited per source address (429 + Retry-After); another address is not', async () => {
  const srv = await startServer({ PARLEY_SIGNUPS_PER_MIN: '3' });
  try {
    const up = (from) => httpFrom(srv, from, 'POST', '/api/auth/signup', { body: { username: uniq('s'), password: 'password-1234' } });
    for (let i = 0; i < 3; i++) assert.equal((await up('127.0.0.2')).status, 201);
    const r = await up('127.0.0.2');
    assert.equal(r.status, 429, r.text);
    assert.equal(r.body.error.code, 'rate_limited');
    assert.ok(retryAfter(r) >= 1 && retryAfter(r) <= 20, `a token is back within 20 s: ${retryAfter(r)}`);
    assert.equal((await up('127.0.0.3')).status, 201);
  } finally { await srv.stop(); }
});

test('conversations: creation limited per source address (429 + Retry-After)', async () => {
  const srv = await startServer({ PARLEY_CONVS_PER_MIN: '3' });
  try {
    const a = await signup(srv);
    const make = (from) => httpFrom(srv, from, 'POST', '/api/conversations', { token: a.token, body: { kind: 'group', title: uniq('t') } });
    for (let i = 0; i < 3; i++) assert.equal((await make('127.0.0.2')).status, 201);
    const r = await make('127.0.0.2');
    assert.equal(r.status, 429, r.text);
    assert.ok(retryAfter(r) >= 1);
    assert.equal((await make('127.0.0.3')).status, 201);
    // a refused creation created nothing
    const list = await http(srv, 'GET', '/api/conversations', { token: a.token });
    assert.equal(list.body.conversations.length, 4);
  } finally { await srv.stop(); }
});

function connectFrom(port, localAddress) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    s.on('error', reject);
    s.once('connect', () => resolve(s));
  });
}

// The first answer on a connection that sends a request, or null if it closes without one.
function firstAnswer(s, text) {
  return new Promise((resolve) => {
    let got = '';
    s.on('data', (d) => { got += d.toString('latin1'); });
    s.on('close', () => resolve(got || null));
    s.write(text);
    s.setTimeout(5000, () => s.destroy());
  });
}

test('connections: open connections per source address are capped (429 at accept)', async () => {
  const srv = await startServer({ PARLEY_CONNS_PER_ADDR: '3', PARLEY_WORKERS: '2' });
  const held = [];
  try {
    for (let i = 0; i < 3; i++) held.push(await connectFrom(srv.port, '127.0.0.2'));
    // the connections above are accepted (each answers a request) before the next is tried
    for (const s of held) {
      const answer = await new Promise((resolve) => {
        s.once('data', (d) => resolve(d.toString('latin1')));
        s.write('GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n');
      });
      assert.match(answer, /^HTTP\/1\.1 200 /);
    }
    const fourth = await connectFrom(srv.port, '127.0.0.2');
    const refused = await firstAnswer(fourth, 'GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.match(refused, /^HTTP\/1\.1 429 /);
    // another address is served
    const other = await connectFrom(srv.port, '127.0.0.3');
    assert.match(await firstAnswer(other, 'GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
    // closing one frees its place: the server closes it itself (Connection: close). The
    // place is given back when that worker's close completes, which another worker may not
    // have seen yet when our next connection lands on it: after the close has reached us,
    // a new connection is served within a few tries (each refused one is closed at once).
    const last = held.pop();
    const closed = new Promise((resolve) => last.once('close', resolve));
    assert.match(await firstAnswer(last, 'GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
    await closed;
    let answer = '';
    for (let i = 0; i < 50 && !/^HTTP\/1\.1 200 /.test(answer); i++) {
      if (i) await new Promise((r) => setTimeout(r, 20));
      const s = await connectFrom(srv.port, '127.0.0.2');
      answer = await firstAnswer(s, 'GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      s.destroy();
    }
    assert.match(answer, /^HTTP\/1\.1 200 /, 'the freed place is taken');
  } finally {
    for (const s of held) s.destroy();
    await srv.stop();
  }
});
