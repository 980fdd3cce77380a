// The descriptor limit (issue 9's idle connections, issue 8's "nothing is silent"): past
// `ulimit -n`, the kernel's queued connections cannot be accepted and libuv resets them at
// once, telling nobody. parleyd must not spin or fail, must warn while the limit is close (one
// log line a second at most), show the limit in /metrics (process_max_fds beside
// process_open_fds), and serve again as soon as descriptors are free.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { start } from '../lib/server.mjs';
import { http, SECRET } from './helpers.mjs';

const LIMIT = 64; // parleyd's own descriptors (listener, loops, database, threads) are fewer
const SOCKETS = 120; // more than LIMIT: some are refused whatever parleyd holds itself

// Under $PARLEYD_WRAPPER (valgrind) the tool's own descriptors share the limit: skipped there.
test('near and past the descriptor limit: a warning, the limit in /metrics, resets past it; served again once free', { skip: process.env.PARLEYD_WRAPPER ? 'under a wrapper' : false }, async () => {
  const srv = await start({
    env: { PARLEY_JWT_SECRET: SECRET, PARLEY_WORKERS: '1', PARLEY_CONNS_PER_ADDR: '0' },
    wrap: ['prlimit', `--nofile=${LIMIT}:${LIMIT}`],
  });
  const socks = [];
  try {
    // open sockets one after another; each stays open (an idle HTTP connection) until the
    // server resets one: that one was past the limit
    let reset = 0;
    for (let i = 0; i < SOCKETS && reset === 0; i++) {
      const s = net.connect(srv.port, '127.0.0.1');
      socks.push(s);
      await new Promise((resolve) => s.once('connect', resolve));
      s.on('error', () => {});
      s.once('close', () => { reset += 1; });
      // a request answered on every socket kept: the server holds it (not merely the kernel)
      const answered = await new Promise((resolve) => {
        let got = '';
        s.on('data', (d) => { got += d; if (got.includes('\r\n\r\n')) resolve(true); });
        s.once('close', () => resolve(false));
        s.write('GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n');
      });
      if (!answered) break;
    }
    assert.ok(reset >= 1, `one of ${socks.length} connections past a limit of ${LIMIT} descriptors was reset`);
    // the log said so before the limit was reached (once a second at most)
    await srv.waitForLog(new RegExp(`descriptor limit close: descriptor \\d+ of ${LIMIT} \\(ulimit -n\\)`));
    assert.ok((srv.stderr.match(/descriptor limit close/g) || []).length <= 8, 'one warning a second, not one per connection');
  } finally {
    for (const s of socks) s.destroy();
  }
  try {
    // served again once the descriptors are free: the health answer and the counter
    let m;
    for (let i = 0; i < 100; i++) {
      try { m = await http(srv, 'GET', '/metrics'); break; } catch { await new Promise((r) => setTimeout(r, 50)); }
    }
    assert.equal(m.status, 200);
    assert.equal(Number(/^process_max_fds (\d+)$/m.exec(m.text)?.[1]), LIMIT);
    const open = Number(/^process_open_fds (\d+)$/m.exec(m.text)?.[1]);
    assert.ok(open > 0 && open < LIMIT, `process_open_fds ${open}`);
  } finally {
    await srv.stop();
  }
});
