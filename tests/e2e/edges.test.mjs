// Edges of issue 8 (items 8-10): no existence leak through a full group; a refused WebSocket
// upgrade answered keep-alive leaves the connection usable; JSON that is valid but holds what
// jansson refuses (numbers like 1e400, integers past int64) is refused by field, with the
// send's id; NUL in a body is kept.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import {
  startServer, http, signupMany, createGroup, openSocket, closeAll, assertError, uniq,
} from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ PARLEY_MAX_GROUP: '2' }); });
after(async () => { if (srv) await srv.stop(); });

test('a full group: a stranger gets 404 like for no group at all; a member 403; the owner 400', async () => {
  const [owner, member, stranger, extra] = await signupMany(srv, 4, 'full');
  const g = await createGroup(srv, owner, [member.user.id]); // 2 of 2
  const add = (who, conv) => http(srv, 'POST', `/api/conversations/${conv}/members`, { token: who.token, body: { user_id: extra.user.id } });
  const fromStranger = await add(stranger, g.id);
  const nothing = await add(stranger, 999999);
  assertError(fromStranger, 404, 'stranger, full group');
  assert.deepEqual(fromStranger.body, nothing.body, 'the same answer as for a group that does not exist');
  assertError(await add(member, g.id), 403, 'plain member');
  const full = await add(owner, g.id);
  assertError(full, 400, 'owner');
  assert.match(full.body.error.message, /full/);
});

// Sends raw requests on one connection and resolves the status lines of the first n answers.
function statuses(port, text, n) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    const t = setTimeout(() => { s.destroy(); reject(new Error(`answers so far: ${got.slice(0, 400)}`)); }, 5000);
    s.on('error', reject);
    s.on('data', (d) => {
      got += d.toString('latin1');
      const lines = got.match(/HTTP\/1\.1 \d{3}/g) || [];
      if (lines.length >= n) { clearTimeout(t); s.destroy(); resolve(lines.map((l) => +l.slice(9))); }
    });
    s.on('connect', () => s.write(text));
  });
}

test('a refused upgrade (401, 426) answered keep-alive: the next request on the connection is served', async () => {
  const key = randomBytes(16).toString('base64');
  const up = (extra) => `GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n${extra}\r\n`;
  const health = 'GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n';
  assert.deepEqual(await statuses(srv.port, up('Sec-WebSocket-Version: 13\r\nAuthorization: Bearer not.a.token\r\n') + health, 2), [401, 200]);
  assert.deepEqual(await statuses(srv.port, up('Sec-WebSocket-Version: 12\r\n') + health + health, 3), [426, 200, 200]);
});

test('JSON: a number jansson cannot hold is refused by field, with the send id; NUL in a body is kept', async () => {
  const [a] = await signupMany(srv, 1, 'json');
  const g = await createGroup(srv, a, []);
  const c = await openSocket(srv, a.token);
  try {
    c.send(`{"op":"send","id":"big-1","conv":1e400,"body":"x"}`);
    assert.deepEqual(await c.next('error'), { op: 'error', id: 'big-1', code: 'bad_request', message: 'send needs conv: a conversation id' });
    c.send(`{"op":"send","id":"big-2","conv":123456789012345678901234567890,"body":"x"}`);
    assert.deepEqual(await c.next('error'), { op: 'error', id: 'big-2', code: 'bad_request', message: 'send needs conv: a conversation id' });
    c.send(`{"op":"read","conv":${g.id},"seq":1e400}`);
    assert.deepEqual(await c.next('error'), { op: 'error', code: 'bad_request', message: 'read needs conv and seq' });
    // a big number where nothing reads it changes nothing
    const id = uniq('n');
    c.send(`{"op":"send","id":"${id}","conv":${g.id},"body":"a\\u0000b","extra":9e999}`);
    const ack = await c.next((f) => f.op === 'ack' && f.id === id);
    const msg = await c.next('msg');
    assert.equal(msg.body, 'a\u0000b');
    assert.equal(msg.seq, ack.seq);
    // and over HTTP, in a body
    const h = await http(srv, 'POST', `/api/conversations/${g.id}/messages`, { token: a.token, raw: `{"id":"${uniq('h')}","body":"ok","n":-1e400}` });
    assert.equal(h.status, 201, h.text);
  } finally { await closeAll(c); }
});
