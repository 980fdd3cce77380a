// Access token expiry with PARLEY_ACCESS_TTL_S=2: a socket whose token expires without
// re-authentication is closed with 4001 'token expired'; re-authenticating with a token
// that lives longer extends the connection past the first token's exp.
//
// No wall-clock assertion: the server's own expiry is the event. A socket closed with 4001
// 'token expired' tells that the server saw exp pass (the close is checked at most a second
// late, with wall >= exp); HTTP checks now >= exp too, so from that close on the token is 401.
// One worker: a single sweep looks at every connection, so when one socket of a pair has
// been closed for its exp, the other has been looked at as well.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signup, decodeJwt, openSocket, closeAll, assertError, signJwt, claimsFor,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ PARLEY_ACCESS_TTL_S: '2', PARLEY_WORKERS: '1' }); });
after(async () => { if (srv) await srv.stop(); });

const expMs = (token) => decodeJwt(token).payload.exp * 1000;
// a bound for a wait, never an assertion: exp is 2 s away, the close at most 1 s after it
const untilExp = (token) => Math.max(0, expMs(token) - Date.now()) + 5000;

async function closedForExpiry(conn, token, what) {
  const info = await conn.waitClosed(untilExp(token));
  assert.deepEqual([info.code, info.reason], [4001, 'token expired'], what);
}

test('expires_in and exp follow PARLEY_ACCESS_TTL_S; once expired the token is refused over HTTP; the refresh token outlives it', async () => {
  const a = await signup(srv, { prefix: 'ttl' });
  assert.equal(a.expires_in, 2);
  const { payload } = decodeJwt(a.token);
  assert.equal(payload.exp - payload.iat, 2);
  assert.equal((await http(srv, 'GET', '/api/me', { token: a.token })).status, 200);
  // the server's expiry as the event: a socket with the same token closed for it
  const probe = await openSocket(srv, a.token);
  try { await closedForExpiry(probe, a.token, 'the probe socket'); } finally { await closeAll(probe); }
  const me = await http(srv, 'GET', '/api/me', { token: a.token });
  assertError(me, 401, 'after exp');
  assert.equal(me.body.error.message, 'token expired');
  const r = await http(srv, 'POST', '/api/auth/refresh', { body: { refresh_token: a.refresh_token } });
  assert.equal(r.status, 200, 'the refresh token outlives the access token');
  assert.equal((await http(srv, 'GET', '/api/me', { token: r.body.access_token })).status, 200);
});

test('a socket whose token expires without re-auth is closed with 4001 token expired, in every auth style', async () => {
  const a = await signup(srv, { prefix: 'ttl' });
  const conns = [
    await openSocket(srv, a.token, { via: 'header' }),
    await openSocket(srv, a.token, { via: 'query' }),
    await openSocket(srv, a.token, { via: 'frame' }),
  ];
  try {
    // open and served until then
    for (const c of conns) assert.equal((await c.roundtrip()).op, 'pong');
    await Promise.all(conns.map((c, i) => closedForExpiry(c, a.token, `socket ${i}`)));
  } finally { await closeAll(conns); }
});

test('re-auth with a longer-lived token keeps the socket open past the first exp, until the new exp', async () => {
  const a = await signup(srv, { prefix: 'ttl' });
  const conn = await openSocket(srv, a.token);
  const control = await openSocket(srv, a.token); // never re-authenticates
  try {
    // a valid token (the server's secret) that ends 2 s after the first one
    const { payload } = decodeJwt(a.token);
    const fresh = signJwt({ ...claimsFor(a.user), iat: payload.iat, exp: payload.exp + 2 });
    conn.send({ op: 'auth', token: fresh });
    const hello = await conn.next('hello', 3000);
    assert.equal(hello.user.id, a.user.id);
    // the first exp passes: the control is closed for it, in the same sweep that looked at conn
    await closedForExpiry(control, a.token, 'the control socket closes at the first exp');
    assert.equal(conn.closeInfo, null, 'the re-authenticated socket was not closed');
    assert.equal((await conn.roundtrip()).op, 'pong', 'and it is still served');
    // ... and it is bounded by the new token's exp
    await closedForExpiry(conn, fresh, 'closed at the new exp');
    assert.equal(conn.log.filter((f) => f.op === 'hello').length, 2);
  } finally { await closeAll(conn, control); }
});
