// `parleyd backup --to FILE`: a consistent copy of the embedded database taken while the
// server runs and writes; the copy, placed as <data>/parley.db of a fresh data directory,
// starts a node with every account, conversation and message it held.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { binary } from '../lib/server.mjs';
import { SECRET, http, signup, startServer } from './helpers.mjs';

test('backup while the server writes; restore into a fresh data directory', async () => {
  const srv = await startServer();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'parley-backup-'));
  try {
    const a = await signup(srv, { prefix: 'bk' });
    const b = await signup(srv, { prefix: 'bl' });
    const conv = (await http(srv, 'POST', '/api/conversations', { token: a.token, body: { kind: 'direct', user_id: b.id } })).body.id;
    for (let i = 0; i < 20; i++) {
      const r = await http(srv, 'POST', `/api/conversations/${conv}/messages`, { token: a.token, body: { id: `before-${i}`, body: `before ${i}` } });
      assert.equal(r.status, 201);
    }
    // writes keep going while the copy is taken
    let stop = false;
    let during = 0;
    const writer = (async () => {
      while (!stop) {
        const r = await http(srv, 'POST', `/api/conversations/${conv}/messages`, { token: b.token, body: { id: `during-${during}`, body: 'x' } });
        if (r.status === 201) during++;
      }
    })();
    const copy = path.join(dir, 'copy.db');
    const res = spawnSync(binary(), ['backup', '--to', copy, '--data', srv.dataDir], { encoding: 'utf8', timeout: 60000 });
    stop = true;
    await writer;
    assert.equal(res.status, 0, res.stderr);
    assert.ok(existsSync(copy) && !existsSync(`${copy}.tmp`), 'the copy, and no temporary file left');
    await srv.stop();

    const fresh = path.join(dir, 'data');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(fresh);
    copyFileSync(copy, path.join(fresh, 'parley.db'));
    const again = await (await import('../lib/server.mjs')).start({ dataDir: fresh, env: { PARLEY_JWT_SECRET: SECRET } });
    try {
      // the accounts (their passwords) and the conversation with every message taken before
      const login = await http(again, 'POST', '/api/auth/login', { body: { username: a.user.username, password: a.password } });
      assert.equal(login.status, 200);
      const page = await http(again, 'GET', `/api/conversations/${conv}/messages?after=0&limit=200`, { token: login.body.access_token });
      assert.equal(page.status, 200);
      const ids = page.body.messages.map((m) => m.id);
      for (let i = 0; i < 20; i++) assert.ok(ids.includes(`before-${i}`), `before-${i} restored`);
      const seqs = page.body.messages.map((m) => m.seq);
      assert.deepEqual(seqs, seqs.map((_, i) => i + 1), 'a consistent copy: dense seqs from 1');
      const list = await http(again, 'GET', '/api/conversations', { token: login.body.access_token });
      assert.equal(list.body.conversations.find((c) => c.id === conv).last_seq, seqs.length, 'last_seq matches the messages');
    } finally {
      await again.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('backup refuses without --to, and for a PostgreSQL node', () => {
  const r1 = spawnSync(binary(), ['backup', '--data', os.tmpdir()], { encoding: 'utf8' });
  assert.equal(r1.status, 2);
  assert.match(r1.stderr, /--to FILE is required/);
  const r2 = spawnSync(binary(), ['backup', '--to', '/tmp/x.db'], { encoding: 'utf8', env: { ...process.env, PARLEY_DB_URL: 'postgresql://parley@127.0.0.1:1/parley' } });
  assert.equal(r2.status, 2);
  assert.match(r2.stderr, /pg_dump/);
});
