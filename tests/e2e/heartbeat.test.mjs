// Heartbeat: the server pings every heartbeat_ms (announced in hello) and closes a connection
// that stays silent for two intervals. Started with PARLEY_HEARTBEAT_MS=1000 to keep it short;
// the test goes by the hello's heartbeat_ms either way.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, signup, openSocket, closeAll, sleep } from './helpers.mjs';

let srv;
before(async () => { srv = await startServer({ PARLEY_HEARTBEAT_MS: '1000' }); });
after(async () => { if (srv) await srv.stop(); });

test('pings every heartbeat_ms; a connection that never answers is closed, one that answers stays', async (t) => {
  const a = await signup(srv, { prefix: 'hb' });
  const live = await openSocket(srv, a.token);
  const silent = await openSocket(srv, a.token, { wsOptions: { autoPong: false } });
  try {
    const hb = live.hello.heartbeat_ms;
    assert.ok(Number.isSafeInteger(hb) && hb > 0);
    if (hb > 5000) {
      t.skip(`heartbeat_ms is ${hb} (PARLEY_HEARTBEAT_MS not honoured): too slow to test here`);
      return;
    }
    // two intervals (plus slack) without a frame from the client: at least one ping came
    await sleep(2 * hb + 500);
    assert.ok(live.pings >= 1, `pings received in ${2 * hb + 500} ms: ${live.pings}`);
    const info = await silent.waitClosed(3 * hb + 3000);
    assert.ok(info.code !== 4001, `a silent connection is closed for silence, not for auth: ${info.code}`);
    assert.ok(live.isOpen, 'the connection that answers pings stays open');
    assert.equal((await live.roundtrip()).op, 'pong');
  } finally { await closeAll(live, silent); }
});
