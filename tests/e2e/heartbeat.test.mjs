// Heartbeat: the server pings every heartbeat_ms (announced in hello) and closes a connection
// that stays silent for two intervals. Started with PARLEY_HEARTBEAT_MS=1000 to keep it short;
// the test goes by the hello's heartbeat_ms either way.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, signup, openSocket, closeAll } from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ PARLEY_HEARTBEAT_MS: '1000' }); });
after(async () => { if (srv) await srv.stop(); });

test('pings every heartbeat_ms; a connection that never answers is closed, one that answers stays', async () => {
  const a = await signup(srv, { prefix: 'hb' });
  const live = await openSocket(srv, a.token);
  const silent = await openSocket(srv, a.token, { wsOptions: { autoPong: false } });
  try {
    const hb = live.hello.heartbeat_ms;
    assert.equal(hb, 1000, 'hello carries PARLEY_HEARTBEAT_MS');
    // a ping comes within an interval (or two, plus the sweep's slack)
    if (live.pings === 0) {
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no ping within ${3 * hb} ms`)), 3 * hb);
        live.ws.once('ping', () => { clearTimeout(t); resolve(); });
      });
    }
    // the silent one is dropped without a close frame (TCP close: 1006 to the client)
    const info = await silent.waitClosed(3 * hb + 3000);
    assert.equal(info.code, 1006, `a silent connection is dropped for silence: ${info.code}`);
    assert.ok(live.isOpen, 'the connection that answers pings stays open');
    assert.equal((await live.roundtrip()).op, 'pong');
  } finally { await closeAll(live, silent); }
});
