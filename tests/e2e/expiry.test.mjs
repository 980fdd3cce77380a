// Access token expiry with PARLEY_ACCESS_TTL_S=2: a socket whose token expires without
// re-authentication is closed with 4001; re-authenticating with a fresh token (from refresh)
// before expiry extends the connection past the first token's exp.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, http, signup, decodeJwt, openSocket, closeAll, sleep, assertError,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ PARLEY_ACCESS_TTL_S: '2' }); });
after(async () => { if (srv) await srv.stop(); });

const expMs = (token) => decodeJwt(token).payload.exp * 1000;
const sleepUntil = (t) => sleep(Math.max(0, t - Date.now()));

test('expires_in and exp follow PARLEY_ACCESS_TTL_S; an expired token is refused over HTTP', async () => {
  const a = await signup(srv, { prefix: 'ttl' });
  assert.equal(a.expires_in, 2);
  const { payload } = decodeJwt(a.token);
  assert.equal(payload.exp - payload.iat, 2);
  assert.equal((await http(srv, 'GET', '/api/me', { token: a.token })).status, 200);
  await sleepUntil(expMs(a.token) + 1100);
  assertError(await http(srv, 'GET', '/api/me', { token: a.token }), 401, 'after exp');
  const r = await http(srv, 'POST', '/api/auth/refresh', { body: { refresh_token: a.refresh_token } });
  assert.equal(r.status, 200, 'the refresh token outlives the access token');
  assert.equal((await http(srv, 'GET', '/api/me', { token: r.body.access_token })).status, 200);
});

test('a socket whose token expires without re-auth is closed with 4001', async () => {
  const a = await signup(srv, { prefix: 'ttl' });
  const conns = [
    await openSocket(srv, a.token, { via: 'header' }),
    await openSocket(srv, a.token, { via: 'query' }),
    await openSocket(srv, a.token, { via: 'frame' }),
  ];
  try {
    const exp = expMs(a.token);
    const infos = await Promise.all(conns.map((c) => c.waitClosed(Math.max(0, exp - Date.now()) + 5000)));
    for (const info of infos) assert.equal(info.code, 4001, `close code at token expiry: ${JSON.stringify(info)}`);
    assert.ok(Date.now() >= exp - 1000, 'not closed long before exp');
  } finally { await closeAll(conns); }
});

test('re-auth with a fresh token before expiry keeps the socket open past the first exp', async () => {
  const a = await signup(srv, { prefix: 'ttl' });
  const conn = await openSocket(srv, a.token);
  const other = await openSocket(srv, a.token); // never re-authenticates: the control
  try {
    const exp1 = expMs(a.token);
    // refresh late in the first token's life so the new exp is a whole second later
    await sleepUntil(exp1 - 900);
    assert.ok(conn.isOpen, 'open before the first exp');
    const r = await http(srv, 'POST', '/api/auth/refresh', { body: { refresh_token: a.refresh_token } });
    assert.equal(r.status, 200, r.text);
    const exp2 = expMs(r.body.access_token);
    assert.ok(exp2 > exp1, `the fresh token lives longer (${exp1} -> ${exp2})`);
    conn.send({ op: 'auth', token: r.body.access_token });
    const hello = await conn.next('hello', 3000);
    assert.equal(hello.user.id, a.user.id);

    await sleepUntil(exp1 + 400);
    assert.ok(Date.now() < exp2, 'test timing: checking between the two exps');
    assert.ok(conn.isOpen, `still open after the first token's exp (${Date.now() - exp1} ms later)`);
    assert.equal((await conn.roundtrip()).op, 'pong');
    const closedOther = await other.waitClosed(Math.max(0, exp1 - Date.now()) + 5000);
    assert.equal(closedOther.code, 4001, 'the control socket (no re-auth) closes at the first exp');
    // ... and it is bounded by the new token's exp
    const info = await conn.waitClosed(Math.max(0, exp2 - Date.now()) + 5000);
    assert.equal(info.code, 4001);
  } finally { await closeAll(conn, other); }
});
