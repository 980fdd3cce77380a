// The setup cache of the C load generator (parley-load --setup-cache, bench/load/cache.c) against
// build/release/parleyd: a miss stores the pool and the entry, the next run is a hit whose checks
// pass, and a corrupt, refused or expired entry falls back to a fresh setup. Tiny shapes (a few
// signups): about 10 s. make bench-test runs it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const LOAD = process.env.PARLEY_LOAD || path.join(root, 'build/release/bench/load/parley-load');
const PARLEYD = process.env.PARLEYD || path.join(root, 'build/release/parleyd');
const have = existsSync(LOAD) && existsSync(PARLEYD);

const dir = mkdtempSync(path.join(os.tmpdir(), 'parley-cache-test-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

// One run: fanout into one group of 4 (2 publishers), half a second; its JSON line.
function run(extra = []) {
  const args = ['fanout', '--members', '4', '--publishers', '2', '--warmup', '0', '--duration', '0.5', '--quiet',
    '--server', PARLEYD, '--name', 'parleyd', '--setup-cache', dir, '--setup-pool', '6', ...extra];
  return new Promise((resolve, reject) => {
    execFile(LOAD, args, { timeout: 120000 }, (err, stdout) => {
      let j;
      try { j = JSON.parse(stdout.trim().split('\n').pop()); } catch { return reject(err || new Error(`no JSON: ${stdout}`)); }
      resolve({ code: err ? err.code : 0, j });
    });
  });
}
const entry = path.join(dir, 'parleyd/fanout-g1-m4.p6');
const pool = path.join(dir, 'parleyd/users');

test('setup cache: miss, hit, fallbacks', { skip: !have && 'make build first' }, async (t) => {
  await t.test('a miss signs the pool up and stores the pool and the entry', async () => {
    const { code, j } = await run();
    assert.equal(code, 0, JSON.stringify(j.problems));
    assert.equal(j.setup_cache.state, 'miss');
    assert.equal(j.setup_cache.pool_users, 6);
    assert.equal(j.setup_cache.stored_pool, true);
    assert.equal(j.setup_cache.stored_entry, true);
    assert.ok(existsSync(path.join(entry, 'data')) && existsSync(path.join(pool, 'setup.json')));
    assert.equal(JSON.parse(readFileSync(path.join(pool, 'setup.json'), 'utf8')).users.length, 6);
  });
  await t.test('the next run is a hit, its checks pass', async () => {
    const { code, j } = await run();
    assert.equal(code, 0, JSON.stringify(j.problems));
    assert.equal(j.setup_cache.state, 'hit');
    assert.equal(j.setup_cache.hit, true);
    assert.ok(j.deliveries > 0);
    assert.deepEqual(j.problems, []);
  });
  await t.test('a smaller --setup-pool uses the larger cached pool (its entries)', async () => {
    const { code, j } = await run(['--setup-pool', '4']);
    assert.equal(code, 0, JSON.stringify(j.problems));
    assert.equal(j.setup_cache.state, 'hit');
    assert.equal(j.setup_cache.key, 'parleyd/fanout-g1-m4.p6');
  });
  await t.test('a change op on a hit posts its own messages', async () => {
    const { code, j } = await run(['--op', 'react']);
    assert.equal(code, 0, JSON.stringify(j.problems));
    assert.equal(j.setup_cache.state, 'hit');
    assert.ok(j.deliveries > 0);
  });
  await t.test('a corrupt entry: the pool serves, the conversation is made again', async () => {
    writeFileSync(path.join(entry, 'setup.json'), 'garbage');
    const { code, j } = await run();
    assert.equal(code, 0, JSON.stringify(j.problems));
    assert.equal(j.setup_cache.state, 'pool');
    assert.match(j.setup_cache.miss, /fanout-g1-m4/);
    assert.equal(j.setup_cache.stored_entry, true);
  });
  await t.test('a database the server refuses: a fresh setup', async () => {
    writeFileSync(path.join(entry, 'data/parley.db'), 'not a database');
    writeFileSync(path.join(pool, 'data/parley.db'), 'not a database');
    const { code, j } = await run();
    assert.equal(code, 0, JSON.stringify(j.problems));
    assert.equal(j.setup_cache.state, 'miss');
    assert.match(j.setup_cache.fallback, /exited during its start/);
    assert.equal(j.setup_cache.pool_users_cached, 0);
    const again = await run();
    assert.equal(again.j.setup_cache.state, 'hit');
  });
  await t.test('an entry whose tokens are near their end: a miss', async () => {
    for (const d of [entry, pool]) {
      const f = path.join(d, 'setup.json');
      const s = JSON.parse(readFileSync(f, 'utf8'));
      s.tokens_issued -= s.access_ttl_s - 3600;
      writeFileSync(f, JSON.stringify(s));
    }
    const { code, j } = await run();
    assert.equal(code, 0, JSON.stringify(j.problems));
    assert.equal(j.setup_cache.state, 'miss');
    assert.match(j.setup_cache.miss, /expired/);
  });
});
