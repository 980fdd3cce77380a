// GET /metrics: the Prometheus text format (0.0.4): a HELP and a TYPE line for every family,
// counters ending in _total, cumulative histogram buckets ending at +Inf = _count, routes as
// templates (never raw ids), and counters that follow what happened and only go up.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { http, signup, startServer } from './helpers.mjs';

async function scrape(srv) {
  const r = await fetch(`${srv.url}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  return r.text();
}

// {name{labels}: value} and the families with their types.
function parse(text) {
  const values = new Map();
  const types = new Map();
  const helps = new Set();
  for (const line of text.split('\n')) {
    if (!line) continue;
    let m;
    if ((m = /^# HELP (\S+) .+$/.exec(line))) { helps.add(m[1]); continue; }
    if ((m = /^# TYPE (\S+) (counter|gauge|histogram)$/.exec(line))) { types.set(m[1], m[2]); continue; }
    m = /^([a-z_]+)(\{(?:[^"}]|"[^"]*")*\})? (-?[0-9.e+]+)$/.exec(line);
    assert.ok(m, `a sample line: ${line}`);
    values.set(m[1] + (m[2] || ''), Number(m[3]));
  }
  return { values, types, helps };
}

test('/metrics: the exposition format, and counters that follow the traffic', async () => {
  const srv = await startServer();
  try {
    const a = await signup(srv, { prefix: 'ma' });
    const b = await signup(srv, { prefix: 'mb' });
    const conv = (await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'direct', user_id: b.id } })).body.id;
    const before = parse(await scrape(srv));

    const required = ['parley_connections', 'parley_ws_frames_received_total', 'parley_ws_frames_sent_total',
      'parley_messages_stored_total', 'parley_deliveries_total', 'parley_batch_size', 'parley_commit_duration_seconds',
      'parley_send_to_deliver_seconds', 'parley_http_requests_total', 'parley_rate_limited_total',
      'parley_slow_consumer_closes_total', 'parley_db_reads_total', 'parley_redis_reconnects_total',
      'parley_writer_queue_depth', 'parley_replica_lag_seconds', 'parley_build_info', 'process_cpu_seconds_total',
      'process_resident_memory_bytes', 'process_open_fds'];
    for (const f of required) {
      assert.ok(before.types.has(f), `TYPE for ${f}`);
      assert.ok(before.helps.has(f), `HELP for ${f}`);
      if (before.types.get(f) === 'counter') assert.ok(f.endsWith('_total'), `${f} is a counter ending in _total`);
    }
    assert.equal(before.values.get('parley_build_info{version="0.1.0",commit="' +
      [...before.values.keys()].find((k) => k.startsWith('parley_build_info')).split('commit="')[1].split('"')[0] +
      '",mode="embedded"}'), 1);

    // b listens, a sends 5 over a WebSocket
    const open = (u) => new Promise((resolve, reject) => {
      const ws = new WebSocket(srv.wsUrl);
      const frames = [];
      ws.on('open', () => ws.send(JSON.stringify({ op: 'auth', token: u.token })));
      ws.on('message', (d) => { const f = JSON.parse(d.toString()); frames.push(f); if (f.op === 'hello') resolve({ ws, frames }); });
      ws.on('error', reject);
    });
    const wa = await open(a), wb = await open(b);
    for (let i = 0; i < 5; i++) wa.ws.send(JSON.stringify({ op: 'send', id: `m${i}`, conv, body: `hello ${i}` }));
    for (let i = 0; i < 200 && wb.frames.filter((f) => f.op === 'msg').length < 5; i++) await new Promise((r) => setTimeout(r, 10));
    await http(srv, 'GET', `/api/conversations/${conv}/messages?limit=5`, { token: a.token });
    const after = parse(await scrape(srv));

    const d = (k) => after.values.get(k) - (before.values.get(k) || 0);
    assert.equal(d('parley_messages_stored_total'), 5);
    assert.ok(d('parley_deliveries_total') >= 10, 'to b and to a\'s own connection');
    assert.ok(d('parley_ws_frames_received_total') >= 7, 'two auths and five sends');
    assert.equal(after.values.get('parley_connections{state="ws"}'), 2);
    assert.ok(d('parley_send_to_deliver_seconds_count') >= 5);
    assert.ok(d('parley_batch_size_count') >= 1);
    assert.equal(after.values.get('parley_http_requests_total{route="/api/conversations/{id}/messages",status="200"}'), 1,
      'a route template, not the raw path');
    assert.ok(![...after.values.keys()].some((k) => k.includes(`/api/conversations/${conv}`)), 'no raw ids in labels');
    // histograms: cumulative buckets, +Inf equals _count
    for (const h of ['parley_batch_size', 'parley_commit_duration_seconds', 'parley_send_to_deliver_seconds']) {
      const buckets = [...after.values.entries()].filter(([k]) => k.startsWith(`${h}_bucket`)).map(([, v]) => v);
      for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i] >= buckets[i - 1], `${h} buckets are cumulative`);
      assert.equal(after.values.get(`${h}_bucket{le="+Inf"}`), after.values.get(`${h}_count`));
    }
    // every counter only went up
    for (const [k, v] of after.values) {
      const name = k.split('{')[0].replace(/_(bucket|sum|count)$/, '');
      if ((after.types.get(name) === 'counter' || after.types.get(name) === 'histogram') && before.values.has(k)) {
        assert.ok(v >= before.values.get(k), `${k} did not go down`);
      }
    }
    wa.ws.close();
    wb.ws.close();
  } finally {
    await srv.stop();
  }
});

test('PARLEY_METRICS_LISTEN moves /metrics to its own address, which serves nothing else but health', async () => {
  // port 0: the kernel chooses, the harness reads the port from the startup line
  const srv = await startServer({ PARLEY_METRICS_LISTEN: '127.0.0.1:0' });
  const mport = srv.metricsPort;
  try {
    assert.ok(Number.isSafeInteger(mport) && mport > 0 && mport !== srv.port, `metrics port ${mport}`);
    assert.equal((await fetch(`${srv.url}/metrics`)).status, 404, 'not on the public listener');
    const r = await fetch(`http://127.0.0.1:${mport}/metrics`);
    assert.equal(r.status, 200);
    assert.match(await r.text(), /^# HELP parley_build_info/m);
    assert.equal((await fetch(`http://127.0.0.1:${mport}/readyz`)).status, 200);
    assert.equal((await fetch(`http://127.0.0.1:${mport}/api/me`)).status, 404);
    assert.equal((await fetch(`http://127.0.0.1:${mport}/`)).status, 404);
    assert.equal((await fetch(`${srv.url}/api/health`)).status, 200);
    assert.equal((await fetch(`${srv.url}/healthz`)).status, 200, '/healthz on the main listener');
    assert.equal((await fetch(`http://127.0.0.1:${mport}/healthz`)).status, 200);
  } finally {
    await srv.stop();
  }
});
