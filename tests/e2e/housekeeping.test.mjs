// Housekeeping (issue 8, item 7): refresh tokens that can never serve again are deleted by the
// writer (at start and every 10 minutes): a logged-out session's whole family, however many
// rotations it went through. A live session keeps its rotated tokens (reuse is detected).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { startServer, http, signup } from './helpers.mjs';

function tokenRows(srv, userId) {
  const out = execFileSync('sqlite3', [path.join(srv.dataDir, 'parley.db'),
    `SELECT count(*) FROM refresh_tokens WHERE user_id = ${Number(userId)}`], { encoding: 'utf8' });
  return Number(out.trim());
}

async function rotate(srv, token, n) {
  for (let i = 0; i < n; i++) {
    const r = await http(srv, 'POST', '/api/auth/refresh', { body: { refresh_token: token } });
    assert.equal(r.status, 200, r.text);
    token = r.body.refresh_token;
  }
  return token;
}

test('refresh tokens: a logged-out family is deleted, rotations included; a live one is kept', async () => {
  let srv = await startServer();
  try {
    const gone = await signup(srv);
    const live = await signup(srv);
    const goneLast = await rotate(srv, gone.refresh_token, 60);
    const liveLast = await rotate(srv, live.refresh_token, 30);
    assert.equal((await http(srv, 'POST', '/api/auth/logout', { body: { refresh_token: goneLast } })).status, 204);
    assert.equal(tokenRows(srv, gone.user.id), 61);
    assert.equal(tokenRows(srv, live.user.id), 31);
    // a restart: the writer's housekeeping runs at start
    await srv.stop({ keep: true });
    srv = await srv.restart();
    // the writer logs what its step deleted: the logged-out family, all 61 rows, and nothing else
    const [, deleted] = await srv.waitForLog(/writer: (\d+) dead refresh tokens deleted/);
    assert.equal(deleted, '61');
    assert.equal(tokenRows(srv, gone.user.id), 0, 'rows left of the logged-out family');
    assert.equal(tokenRows(srv, live.user.id), 31, 'the live family is kept whole');
    // and still detects reuse of one of its rotated tokens
    const reused = await http(srv, 'POST', '/api/auth/refresh', { body: { refresh_token: live.refresh_token } });
    assert.equal(reused.status, 401);
    assert.match(reused.body.error.message, /reused/);
    assert.equal((await http(srv, 'POST', '/api/auth/refresh', { body: { refresh_token: liveLast } })).status, 401);
  } finally { await srv.stop(); }
});
