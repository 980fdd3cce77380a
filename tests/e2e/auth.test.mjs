// Accounts and tokens: signup, login, refresh (rotation and theft detection), logout, /api/me,
// and refusal of forged, expired and wrongly signed access tokens on HTTP and on the WebSocket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signup, uniq, assertError, assertSession, assertUser, signJwt, claimsFor,
  decodeJwt, openSocket, rawSocket, expectWsRefused, closeAll, SECRET,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer(); });
after(async () => { if (srv) await srv.stop(); });

const post = (path, body) => http(srv, 'POST', path, { body });

test('signup: 201 with user, tokens and expires_in; username folded to lower case', async () => {
  const name = uniq('MiXeD_');
  const res = await post('/api/auth/signup', { username: name, password: 'correct horse 1' });
  assert.equal(res.status, 201, res.text);
  assertSession(res.body);
  assert.equal(res.body.user.username, name.toLowerCase());
  assert.equal(res.body.user.display_name, name.toLowerCase(), 'display_name defaults to the (folded) username');
  assert.ok(Math.abs(res.body.user.created_at - Date.now()) < 10 * 60 * 1000, 'created_at is ms since epoch');
  assert.equal(res.body.expires_in, 900, 'default access token lifetime is 15 minutes');
  const { header, payload } = decodeJwt(res.body.access_token);
  assert.equal(header.alg, 'HS256');
  assert.equal(payload.sub, String(res.body.user.id));
  assert.equal(payload.name, name.toLowerCase());
  assert.equal(typeof payload.iat, 'number');
  assert.equal(payload.exp - payload.iat, 900);

  const me = await http(srv, 'GET', '/api/me', { token: res.body.access_token });
  assert.equal(me.status, 200, me.text);
  assert.deepEqual(me.body.user, res.body.user);
});

test('signup: display_name is kept; allowed characters and length bounds', async () => {
  const res = await post('/api/auth/signup', { username: uniq('dn'), password: 'password12', display_name: 'Zoë Q. Public' });
  assert.equal(res.status, 201, res.text);
  assert.equal(res.body.user.display_name, 'Zoë Q. Public');
  for (const username of ['a_b' + uniq('').slice(0, 3), `x.y-z_${uniq('')}`.slice(0, 32), ('n' + uniq('')).padEnd(32, '9')]) {
    const ok = await post('/api/auth/signup', { username, password: 'password12' });
    assert.equal(ok.status, 201, `${username}: ${ok.text}`);
    assert.equal(ok.body.user.username, username);
  }
  // passwords are counted in bytes: 4 two-byte characters are 8 bytes (ok); 256 bytes ok
  for (const password of ['éééé', 'p'.repeat(256)]) {
    const ok = await post('/api/auth/signup', { username: uniq('pw'), password });
    assert.equal(ok.status, 201, `password of ${Buffer.byteLength(password)} bytes: ${ok.text}`);
  }
});

test('signup: invalid usernames, passwords and display names are 400 bad_request', async () => {
  const cases = [
    [{ username: 'ab', password: 'password12' }, 'username too short'],
    [{ username: 'a'.repeat(33), password: 'password12' }, 'username too long'],
    [{ username: 'has space', password: 'password12' }, 'username with a space'],
    [{ username: 'bad!name', password: 'password12' }, 'username with !'],
    [{ username: 'ünïcödé', password: 'password12' }, 'non-ASCII username'],
    [{ username: 'ｆｕｌｌ', password: 'password12' }, 'full-width username'],
    [{ username: 12345, password: 'password12' }, 'numeric username'],
    [{ password: 'password12' }, 'missing username'],
    [{ username: uniq('ok'), password: 'short7!' }, 'password of 7 bytes'],
    [{ username: uniq('ok'), password: 'ééé' }, 'password of 6 bytes in 3 characters'],
    [{ username: uniq('ok'), password: 'p'.repeat(257) }, 'password of 257 bytes'],
    [{ username: uniq('ok') }, 'missing password'],
    [{ username: uniq('ok'), password: 12345678 }, 'numeric password'],
    [{ username: uniq('ok'), password: 'password12', display_name: '' }, 'empty display_name'],
    [{ username: uniq('ok'), password: 'password12', display_name: 'd'.repeat(65) }, 'display_name of 65 characters'],
  ];
  for (const [body, what] of cases) assertError(await post('/api/auth/signup', body), 400, what);
  assertError(await http(srv, 'POST', '/api/auth/signup', { raw: '{"username":' }), 400, 'malformed JSON');
  assertError(await http(srv, 'POST', '/api/auth/signup', { raw: '[1,2]' }), 400, 'JSON array body');
});

test('signup: a taken username is 409 conflict, also with different letter case', async () => {
  const name = uniq('taken');
  assert.equal((await post('/api/auth/signup', { username: name, password: 'password12' })).status, 201);
  assertError(await post('/api/auth/signup', { username: name, password: 'otherpass12' }), 409, 'same name');
  assertError(await post('/api/auth/signup', { username: name.toUpperCase(), password: 'otherpass12' }), 409, 'upper-case name');
});

test('login: 200 with the session shape; case-insensitive username', async () => {
  const s = await signup(srv, { prefix: 'login' });
  const res = await post('/api/auth/login', { username: s.user.username, password: s.password });
  assert.equal(res.status, 200, res.text);
  assertSession(res.body);
  assert.deepEqual(res.body.user, s.user);
  assert.notEqual(res.body.refresh_token, s.refresh_token);
  const me = await http(srv, 'GET', '/api/me', { token: res.body.access_token });
  assert.equal(me.status, 200);
  assert.equal(me.body.user.id, s.user.id);

  const upper = await post('/api/auth/login', { username: s.user.username.toUpperCase(), password: s.password });
  assert.equal(upper.status, 200, `login with the unfolded username: ${upper.text}`);
  assert.equal(upper.body.user.username, s.user.username);
});

test('login: wrong password and unknown user get the identical 401', async () => {
  const s = await signup(srv, { prefix: 'login' });
  const wrong = await post('/api/auth/login', { username: s.user.username, password: s.password + 'x' });
  const unknown = await post('/api/auth/login', { username: uniq('nobody'), password: s.password });
  assertError(wrong, 401, 'wrong password');
  assertError(unknown, 401, 'unknown user');
  assert.deepEqual(wrong.body, unknown.body, 'same body whether or not the user exists');
});

test('refresh: new tokens, the old refresh token stops working', async () => {
  const s = await signup(srv, { prefix: 'ref' });
  const r1 = await post('/api/auth/refresh', { refresh_token: s.refresh_token });
  assert.equal(r1.status, 200, r1.text);
  assertSession(r1.body);
  assert.deepEqual(r1.body.user, s.user);
  assert.notEqual(r1.body.refresh_token, s.refresh_token, 'a NEW refresh token');
  const me = await http(srv, 'GET', '/api/me', { token: r1.body.access_token });
  assert.equal(me.status, 200, 'the new access token works');
  assertError(await post('/api/auth/refresh', { refresh_token: s.refresh_token }), 401, 'old refresh token');
});

test('refresh: presenting an already-rotated token revokes the whole family', async () => {
  const s = await signup(srv, { prefix: 'theft' });
  const r1 = await post('/api/auth/refresh', { refresh_token: s.refresh_token });
  assert.equal(r1.status, 200, r1.text);
  const r2 = await post('/api/auth/refresh', { refresh_token: r1.body.refresh_token });
  assert.equal(r2.status, 200, r2.text);
  // the thief (or the victim) replays the first, long rotated token
  assertError(await post('/api/auth/refresh', { refresh_token: s.refresh_token }), 401, 'rotated token replayed');
  // ... and the newest token of that family is dead too
  assertError(await post('/api/auth/refresh', { refresh_token: r2.body.refresh_token }), 401, 'newest token after theft detection');
});

test('refresh: unknown, missing or malformed refresh token', async () => {
  assertError(await post('/api/auth/refresh', { refresh_token: 'not-a-real-token' }), 401, 'unknown token');
  const missing = await post('/api/auth/refresh', {});
  assertError(missing, 400, 'missing token');
  assert.equal(missing.body.error.message, 'refresh_token is required');
  assertError(await http(srv, 'POST', '/api/auth/refresh', { raw: 'nope' }), 400, 'malformed JSON');
});

test('logout: 204, the refresh token is revoked; unknown token 204; access token stays valid', async () => {
  const s = await signup(srv, { prefix: 'out' });
  const res = await post('/api/auth/logout', { refresh_token: s.refresh_token });
  assert.equal(res.status, 204, res.text);
  assertError(await post('/api/auth/refresh', { refresh_token: s.refresh_token }), 401, 'refresh after logout');
  const again = await post('/api/auth/logout', { refresh_token: s.refresh_token });
  assert.equal(again.status, 204, 'logout twice');
  const unknown = await post('/api/auth/logout', { refresh_token: 'never-issued-' + uniq('') });
  assert.equal(unknown.status, 204, 'logout with an unknown token');
  const me = await http(srv, 'GET', '/api/me', { token: s.token });
  assert.equal(me.status, 200, 'access tokens already issued stay valid until exp');
});

test('/api/me: 401 without, with a malformed, or with a non-Bearer authorization', async () => {
  assertError(await http(srv, 'GET', '/api/me'), 401, 'no authorization');
  assertError(await http(srv, 'GET', '/api/me', { token: 'garbage' }), 401, 'garbage token');
  assertError(await http(srv, 'GET', '/api/me', { token: 'a.b.c' }), 401, 'three garbage parts');
  const s = await signup(srv, { prefix: 'me' });
  assertError(await http(srv, 'GET', '/api/me', { headers: { authorization: `Basic ${s.token}` } }), 401, 'Basic scheme');
  assertError(await http(srv, 'GET', '/api/me', { token: s.token.slice(0, -2) + (s.token.endsWith('AA') ? 'BB' : 'AA') }), 401, 'tampered signature');
});

// -------------------------------------------------------------- forged tokens
// Each test signs up its own victim and forges its own tokens: none depends on another
// having run first (node --test --test-name-pattern runs any one alone).
async function forgeFor(who) {
  const victim = who || await signup(srv, { prefix: 'forge' });
  const good = signJwt(claimsFor(victim.user), { secret: SECRET });
  const forged = {
    good,
    none: signJwt(claimsFor(victim.user), { alg: 'none' }),
    otherKey: signJwt(claimsFor(victim.user), { secret: 'another-secret-entirely-0123456789' }),
    expired: signJwt(claimsFor(victim.user, { iatShift: -3600, ttl: 600 }), { secret: SECRET }),
    hs512: signJwt(claimsFor(victim.user), { alg: 'HS512', secret: SECRET }),
    noExp: signJwt({ sub: String(victim.user.id), name: victim.user.username, iat: Math.floor(Date.now() / 1000) }, { secret: SECRET }),
    numericSubUnknown: signJwt({ ...claimsFor(victim.user), sub: '999999999' }, { secret: SECRET }),
  };
  // alg none with the original (valid) signature kept: still refused
  const [, body, sig] = good.split('.');
  forged.noneWithSig = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${body}.${sig}`;
  return { victim, forged };
}

const FORGED = {
  none: 'alg none',
  noneWithSig: 'alg none with a valid HS256 signature',
  otherKey: 'HS256 with another key',
  expired: 'expired HS256',
  hs512: 'HS512 with the right key',
};

test('forged tokens: a correctly forged token is accepted (sanity check of the forging helper)', async () => {
  const { victim, forged } = await forgeFor();
  const me = await http(srv, 'GET', '/api/me', { token: forged.good });
  assert.equal(me.status, 200, `an HS256 token signed with the server's secret: ${me.text}`);
  assert.equal(me.body.user.id, victim.user.id);
  const conn = await openSocket(srv, forged.good);
  assert.equal(conn.hello.user.id, victim.user.id);
  await conn.close();
});

test('forged tokens are refused on HTTP with 401', async () => {
  const { forged } = await forgeFor();
  for (const [k, what] of Object.entries(FORGED)) {
    assertError(await http(srv, 'GET', '/api/me', { token: forged[k] }), 401, what);
    assertError(await http(srv, 'GET', '/api/conversations', { token: forged[k] }), 401, `${what} on /api/conversations`);
  }
});

test('tokens without exp, or for a user that does not exist, are refused (401)', async () => {
  const { forged } = await forgeFor();
  assertError(await http(srv, 'GET', '/api/me', { token: forged.noExp }), 401, 'token without exp');
  const unknown = await http(srv, 'GET', '/api/me', { token: forged.numericSubUnknown });
  assertError(unknown, 401, 'token for a user that does not exist');
  assert.equal(unknown.body.error.message, 'unknown user');
});

test('forged tokens are refused on the WebSocket: 401 at the upgrade (header, ?token=), close 4001 (auth frame)', async () => {
  const { forged } = await forgeFor();
  for (const [k, what] of Object.entries(FORGED)) {
    await expectWsRefused(srv, forged[k], 'header', `${what} in Authorization`);
    await expectWsRefused(srv, forged[k], 'query', `${what} in ?token=`);
    await expectWsRefused(srv, forged[k], 'frame', `${what} in an auth frame`, k === 'expired' ? 'token expired' : 'invalid token');
  }
  await expectWsRefused(srv, 'garbage', 'header', 'garbage token');
  await expectWsRefused(srv, 'garbage', 'frame', 'garbage token', 'invalid token');
  // a valid token of a user that does not exist: the upgrade is accepted, then 4001
  for (const via of ['header', 'query']) {
    const ghost = await rawSocket(srv, { token: forged.numericSubUnknown, via });
    assert.equal(ghost.upgradeStatus, null, `${via}: the upgrade of a valid token is accepted`);
    const info = await ghost.waitClosed(5000);
    assert.deepEqual([info.code, info.reason], [4001, 'unknown user'], via);
    assert.ok(!ghost.log.some((f) => f.op === 'hello'), `${via}: no hello`);
  }
});

test('forged tokens used to re-authenticate an open socket close it with 4001', async () => {
  const { victim, forged } = await forgeFor();
  const conn = await openSocket(srv, victim.token);
  conn.send({ op: 'auth', token: forged.hs512 });
  const info = await conn.waitClosed(5000).finally(() => closeAll(conn));
  assert.deepEqual([info.code, info.reason], [4001, 'invalid token']);
  assert.ok(!conn.log.slice(1).some((f) => f.op === 'hello'), 'no second hello');
});
