// The graceful drain on SIGTERM (PARLEY_DRAIN_DELAY_S, PARLEY_DRAIN_SECONDS): /readyz turns
// 503 at once while the node keeps serving its open sessions and refuses new WebSocket
// sessions; then the WebSockets close with 1001, spread over the drain window, not all at
// once; every send acked before is stored; the process exits 0. Logs as JSON lines.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { SECRET, http, signup, startServer, uniq } from './helpers.mjs';

async function openSession(srv, token) {
  const ws = new WebSocket(srv.wsUrl);
  const frames = [];
  const closed = new Promise((resolve) => ws.on('close', (code) => resolve({ code, at: Date.now() })));
  await new Promise((resolve, reject) => {
    ws.on('open', () => ws.send(JSON.stringify({ op: 'auth', token })));
    ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      frames.push(f);
      if (f.op === 'hello') resolve();
    });
    ws.on('error', reject);
  });
  return { ws, frames, closed };
}

async function readyz(srv) {
  const r = await fetch(`${srv.url}/readyz`, { signal: AbortSignal.timeout(3000) });
  return { status: r.status, body: await r.json() };
}

test('SIGTERM: not ready at once, open sessions served, new ones refused, 1001 closes spread over the window, exit 0', async () => {
  const srv = await startServer({ PARLEY_DRAIN_DELAY_S: '1', PARLEY_DRAIN_SECONDS: '2', PARLEY_LOG_FORMAT: 'json', PARLEY_LOG_LEVEL: 'info' });
  const u = await signup(srv, { prefix: 'dr' });
  const peer = await signup(srv, { prefix: 'dp' });
  const conv = (await http(srv, 'POST', '/api/conversations', { token: u.token, body: { kind: 'direct', user_id: peer.user.id } })).body.id;
  const sessions = [];
  for (let i = 0; i < 8; i++) sessions.push(await openSession(srv, u.token));
  assert.equal((await readyz(srv)).status, 200);

  const t0 = Date.now();
  srv.child.kill('SIGTERM');
  // not ready at once, naming why
  let r;
  for (let i = 0; i < 50; i++) {
    r = await readyz(srv);
    if (r.status === 503) break;
    await new Promise((res) => setTimeout(res, 20));
  }
  assert.equal(r.status, 503);
  assert.ok(r.body.problems.includes('draining'), JSON.stringify(r.body));
  // an open session is still served: a send is acked
  const id = uniq('m');
  sessions[0].ws.send(JSON.stringify({ op: 'send', id, conv, body: 'during the drain' }));
  for (let i = 0; i < 100 && !sessions[0].frames.some((f) => f.op === 'ack' && f.id === id); i++) {
    await new Promise((res) => setTimeout(res, 20));
  }
  assert.ok(sessions[0].frames.some((f) => f.op === 'ack' && f.id === id), 'acked during the drain');
  // a new WebSocket session is refused (the balancer places it elsewhere); HTTP still answers
  const refused = await new Promise((resolve) => {
    const ws = new WebSocket(srv.wsUrl);
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode));
    ws.on('open', () => { ws.close(); resolve(101); });
    ws.on('error', () => resolve(0));
  });
  assert.equal(refused, 503);
  assert.equal((await http(srv, 'GET', '/api/health')).status, 200);

  const closes = await Promise.all(sessions.map((s) => s.closed));
  for (const c of closes) assert.equal(c.code, 1001);
  const times = closes.map((c) => c.at - t0).sort((a, b) => a - b);
  assert.ok(times[0] >= 900, `no close before the delay (first at ${times[0]} ms)`);
  assert.ok(times[times.length - 1] - times[0] >= 800, `closes spread over the window (${times.join(', ')} ms)`);
  const { code } = await srv.exited;
  assert.equal(code, 0);
  // JSON log lines, the acked message stored (a new server on the same data)
  const lines = srv.stderr.split('\n').filter((l) => l.trim());
  assert.ok(lines.length > 0 && lines.every((l) => { try { return typeof JSON.parse(l).msg === 'string'; } catch { return false; } }),
    'every log line is a JSON object with msg');
  const again = await srv.restart({ env: { PARLEY_JWT_SECRET: SECRET } });
  try {
    const page = await http(again, 'GET', `/api/conversations/${conv}/messages?after=0`, { token: u.token });
    assert.deepEqual(page.body.messages.map((m) => m.id), [id]);
  } finally {
    await again.stop();
  }
});

test('SIGINT drains at once (Ctrl-C), whatever the drain settings', async () => {
  const srv = await startServer({ PARLEY_DRAIN_DELAY_S: '30', PARLEY_DRAIN_SECONDS: '30' });
  const t0 = Date.now();
  const { code } = await srv.stop({ signal: 'SIGINT' });
  assert.equal(code, 0);
  assert.ok(Date.now() - t0 < 10000);
});
