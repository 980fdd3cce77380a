// Tests of bench/report.mjs on results files of bench/compare.mjs: node --test bench/report.test.mjs
// (make bench-test). No server runs: the input is a stored results file and a small made-up one.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BEGIN, END, merge, section, splice } from './report.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const stored = path.join(here, 'results/2026-12-02-quick-all-servers.json');
const report = path.join(here, 'report.mjs');

// A results file as compare.mjs writes it since 2026-12-03: the group-size sweep and the
// conns steps with their fit.
function madeUp() {
  const fan = (members, dps, cpu, p) => ({ scenario: 'fanout', params: { groups: 1, members, publishers: 4, window: 8 }, deliveries_per_s: dps, server_cpu_us_per_delivery: cpu, latency_ms: { n: 100, p50: p, p90: p * 2, p99: p * 3, p999: p * 4, max: p * 5 }, cpu: { wall_s: 10, other_cpu_s: 1 } });
  const conns = (base, per) => ({ scenario: 'conns', conns: 19000, rss_before_kib: base, rss_after_kib: base + per * 19000, kib_per_conn: per, steps: [5000, 10000, 19000].map((n) => ({ conns: n, rss_kib: base + per * n, kib_per_conn: per })), fit: { base_kib: base, bytes_per_conn: per * 1024 } });
  const runs = [];
  for (const [sv, k] of [['parleyd', 1], ['uws-ref', 2]]) {
    runs.push({ round: 1, scenario: 'load/fanout-m10', server: sv, code: 0, cmd: `build/release/bench/load/parley-load fanout --members 10 --server /x/${sv} --name ${sv}`, result: fan(10, 100000 / k, 2 * k, 1 * k) });
    runs.push({ round: 1, scenario: 'load/fanout', server: sv, code: 0, cmd: 'c', result: fan(1000, 1000000 / k, 0.5 * k, 10 * k) });
    runs.push({ round: 1, scenario: 'load/conns', server: sv, code: 0, cmd: 'c', result: conns(11000 * k, 0.5 * k) });
  }
  return {
    started: '2026-12-03T06:00:00.000Z', finished: '2026-12-03T06:10:00.000Z', reps: 1, quick: false,
    args: ['--base-bin', '/tmp/b/parleyd', '--base-label', 'HEAD~1 = abc', '--only', 'load/fanout,load/conns', '--out', '/tmp/x.json'],
    servers: [{ name: 'parleyd' }, { name: 'uws-ref' }],
    medians: { 'load/fanout delivered frames/s': { parleyd: 1000000, 'uws-ref': 500000 } },
    better: { 'load/fanout delivered frames/s': 'higher' },
    runs,
  };
}

test('splice keeps everything outside the markers and is idempotent', () => {
  const doc = '# Benchmarks\n\nhand-written intro\n\n## Results with something\n\nhand-written findings\n';
  const once = splice(doc, 'GENERATED ONE');
  assert.equal(once, `# Benchmarks\n\nhand-written intro\n\n${BEGIN}\nGENERATED ONE\n${END}\n\n## Results with something\n\nhand-written findings\n`);
  const twice = splice(once, 'GENERATED TWO');
  assert.equal(twice, once.replace('GENERATED ONE', 'GENERATED TWO'));
  assert.equal(splice(twice, 'GENERATED ONE'), once);
  assert.equal(splice('no results heading\n', 'G'), `no results heading\n\n${BEGIN}\nG\n${END}\n`);
  assert.throws(() => splice(`x\n${BEGIN}\ny\n`, 'G'), /only one of the markers/);
  assert.throws(() => splice(`${END}\nx\n${BEGIN}\n`, 'G'), /wrong order/);
  assert.throws(() => splice(`${BEGIN}\n${END}\n${BEGIN}\n${END}\n`, 'G'), /more than once/);
  // quoted in prose, the markers are not markers
  const prose = `the lines \`${BEGIN}\` and \`${END}\` bound it\n\n`;
  assert.equal(splice(prose + once, 'GENERATED TWO'), prose + twice);
  assert.equal(splice(prose, 'G'), `${prose}${BEGIN}\nG\n${END}\n`);
});

test('the section of a stored results file: commands, medians, latency, group size, conns', () => {
  const j = JSON.parse(readFileSync(stored, 'utf8'));
  const s = section(j, 'bench/results/2026-12-02-quick-all-servers.json', ['latency.svg', 'groupsize.svg', 'conns.svg'], '/r/docs/bench', '/r/docs');
  assert.match(s, /quick mode/);
  assert.match(s, /build\/release\/bench\/load\/parley-load fanout --groups 1 --members 200 --publishers 4 --window 8 --warmup 1 --duration 3\n/);
  assert.match(s, /\| load\/writes \| acked msg\/s \| 55,926 \| 2,647 \| 25,802 \| 28,007 \| 21\.13x \| 2\.17x \| 2\.00x \| higher \|/);
  assert.match(s, /\| load\/fanout \| 1 x 200 \| parleyd \| 5\.34 \| 6\.91 \| 10\.8 \| 23\.2 \| 28\.1 \|/);
  assert.match(s, /\| 200 \| uws-ref \| 811,393 \| 0\.44 \| 1 \|/);
  assert.match(s, /\| node-ref \| 2,000 \| 153 \| 12\.8 \|/);
  assert.match(s, /!\[send-to-deliver latency percentiles\]\(bench\/latency\.svg\)/);
  assert.ok(!s.includes(BEGIN) && !s.includes(END));
});

test('the section of a new results file: the run command, the sweep, the fit and its predictions', () => {
  const s = section(madeUp(), 'bench/results/x.json', [], '/r/docs/bench', '/r/docs');
  assert.match(s, /\nbench\/run\.sh --base HEAD~1 --only load\/fanout,load\/conns --out bench\/results\/x\.json\n/);
  assert.match(s, /\| 10 \| parleyd \| 100,000 \| 2 \| 1 \|\n\| 1,000 \| parleyd \| 1,000,000 \| 0\.5 \| 1 \|/);
  // parleyd: 11000 KiB + 512 B per connection: 100,000 -> (11000 + 50000) / 1024 MiB
  assert.match(s, /\| parleyd \| fit \| 10\.7 MiB \+ N x 512 B \|  \| 59\.6 \| 499 \|/);
  assert.match(s, /\| uws-ref \| 19,000 \| 40 \| 1 \|/);
  assert.ok(!s.includes('!['), 'no plot links without plots');
});

test('several files: a later file replaces the same scenario and server, each file keeps its command', () => {
  const old = JSON.parse(readFileSync(stored, 'utf8'));
  const j = merge([{ name: 'bench/results/old.json', j: old }, { name: 'bench/results/new.json', j: madeUp() }]);
  assert.equal(j.runs.filter((r) => r.scenario === 'load/conns' && r.server === 'parleyd').length, 1);
  assert.equal(j.runs.find((r) => r.scenario === 'load/conns' && r.server === 'parleyd').result.steps.length, 3);
  assert.ok(j.runs.some((r) => r.scenario === 'load/conns' && r.server === 'node-ref'), 'node-ref kept from the old file');
  assert.equal(j.medians['load/fanout delivered frames/s'].parleyd, 1000000);
  assert.equal(j.medians['load/fanout delivered frames/s']['node-ref'], old.medians['load/fanout delivered frames/s']['node-ref']);
  const s = section(j, null, [], '/r/docs/bench', '/r/docs');
  assert.match(s, /- `bench\/results\/old\.json`: run 2026-12-02T15:50:42\.652Z, \*\*quick mode\*\*/);
  assert.match(s, /# bench\/results\/old\.json: the runner's arguments are not in that file/);
  assert.match(s, /\nbench\/run\.sh --base HEAD~1 --only load\/fanout,load\/conns --out bench\/results\/new\.json\n/);
  assert.match(s, /\nnode bench\/report\.mjs bench\/results\/old\.json bench\/results\/new\.json\n/);
});

test('the command line: the doc rewritten in place, plots rendered when gnuplot is there', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'report-test-'));
  try {
    const doc = path.join(dir, 'B.md');
    const results = path.join(dir, 'r.json');
    writeFileSync(results, JSON.stringify(madeUp()));
    writeFileSync(doc, '# B\n\nmine\n\n## Results old\n\nmine too\n');
    let gnuplot = true;
    try { execFileSync('gnuplot', ['--version'], { stdio: 'ignore' }); } catch { gnuplot = false; }
    execFileSync(process.execPath, [report, results, '--doc', doc, '--plots', path.join(dir, 'plots')], { stdio: 'pipe' });
    const out = readFileSync(doc, 'utf8');
    assert.ok(out.startsWith('# B\n\nmine\n\n<!-- generated: make bench -->\n'));
    assert.ok(out.endsWith(`${END}\n\n## Results old\n\nmine too\n`));
    if (gnuplot) {
      assert.deepEqual(readdirSync(path.join(dir, 'plots')).sort(), ['conns.svg', 'groupsize.svg', 'latency.svg']);
      assert.match(readFileSync(path.join(dir, 'plots/conns.svg'), 'utf8'), /<svg[\s\S]*uws-ref[\s\S]*<\/svg>/);
      assert.match(out, /!\[server RSS against idle connections\]\(plots\/conns\.svg\)/);
    }
    // again: the same document
    execFileSync(process.execPath, [report, results, '--doc', doc, '--no-plots'], { stdio: 'pipe' });
    const noLinks = (t) => t.replace(/!\[[^\n]*\]\([^)]*\)\n\n/g, '');
    assert.equal(readFileSync(doc, 'utf8'), noLinks(out));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
