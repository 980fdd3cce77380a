#!/usr/bin/env node
// report: turns one results file of bench/compare.mjs (bench/results/*.json) into plots and the
// generated section of docs/BENCHMARKS.md. `make bench` runs it after the suite.
//
//   node bench/report.mjs RESULTS.json [MORE.json ...] [--doc docs/BENCHMARKS.md] [--plots docs/bench] [--no-plots]
//                         [--format svg|png]
//
// Several files are shown as one: a scenario and server in a later file replaces the earlier one's.
// The plots (gnuplot, Debian's gnuplot-nox; SVG): latency.svg (send-to-deliver p50, p90, p99,
// p99.9 and max per server, for the fan-out and the pairs), groupsize.svg (deliveries/s and server
// CPU per delivery against the group size: load/fanout-m10, load/fanout-m100, load/fanout) and
// conns.svg (server RSS and RSS per connection against the number of idle connections: the steps
// of load/conns). A plot whose data is not in the file is left out; without gnuplot there are
// no plots (said on stderr) and the tables are still written.
//
// docs/BENCHMARKS.md: only the text between the two marker lines
//   <!-- generated: make bench -->
//   <!-- end generated -->
// is replaced; everything else (the findings, written by hand) is kept byte for byte. Without the
// markers, the section is put in before the first "## Results" heading (else at the end).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
export const BEGIN = '<!-- generated: make bench -->';
export const END = '<!-- end generated -->';

// ---------------------------------------------------------------- reading the results

const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fmt = (x) => {
  if (x === null || x === undefined || !Number.isFinite(x)) return '-';
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString('en-US');
  if (a >= 100) return String(Math.round(x));
  if (a >= 10) return String(Math.round(x * 10) / 10);
  return String(Math.round(x * 100) / 100);
};
const ratio = (a, b) => (a == null || b == null || !b ? '-' : `${(a / b).toFixed(2)}x`);
// Results files before 2026-12-03 do not say which way a metric is better.
const guessBetter = (metric) => (/\/s$|per_s/.test(metric) ? 'higher' : 'lower');

// The cells of a results file that produced a result, by scenario and server.
function cellsOf(j, scenario, server) {
  return j.runs.filter((r) => r.scenario === scenario && r.server === server && r.result);
}
function serverNames(j) {
  const seen = new Set(j.servers?.map((s) => s.name) || []);
  for (const r of j.runs) seen.add(r.server);
  return [...seen];
}
function scenarioIds(j) {
  const ids = [];
  for (const r of j.runs) if (!ids.includes(r.scenario)) ids.push(r.scenario);
  return ids;
}

// Latency percentiles (ms) per scenario and server: medians over the rounds.
const PCTS = [['p50', 'p50'], ['p90', 'p90'], ['p99', 'p99'], ['p99.9', 'p999'], ['max', 'max']];
function latencyRows(j) {
  const rows = [];
  for (const sc of scenarioIds(j).filter((id) => /^load\/(fanout(-m\d+)?|pairs)$/.test(id))) {
    for (const sv of serverNames(j)) {
      const cells = cellsOf(j, sc, sv).filter((c) => c.result.latency_ms?.n);
      if (!cells.length) continue;
      rows.push({ scenario: sc, server: sv, size: sizeOf(cells[0].result), v: PCTS.map(([, k]) => median(cells.map((c) => c.result.latency_ms[k]))) });
    }
  }
  return rows;
}
function sizeOf(r) {
  const p = r.params || {};
  if (r.scenario === 'fanout') return `${p.groups} x ${p.members}`;
  if (r.scenario === 'pairs') return `${p.users} users, ${p.rate ? `${p.rate} msg/s` : `window ${p.window}`}`;
  return '';
}

// Fan-out (send) into one group, against the group size.
function groupRows(j) {
  const rows = [];
  for (const sv of serverNames(j)) {
    const by = new Map();
    for (const c of j.runs.filter((x) => x.server === sv && x.result?.scenario === 'fanout')) {
      const p = c.result.params || {};
      if ((p.op || 'send') !== 'send' || p.groups !== 1 || p.rate) continue;
      if (!by.has(p.members)) by.set(p.members, []);
      by.get(p.members).push(c.result);
    }
    for (const [m, rs] of [...by].sort((a, b) => a[0] - b[0]))
      rows.push({ server: sv, members: m, dps: median(rs.map((r) => r.deliveries_per_s)), cpu: median(rs.map((r) => r.server_cpu_us_per_delivery)), rounds: rs.length });
  }
  return rows;
}

// Idle connections: per server, RSS after each step (medians over the rounds), and the fit.
function connRows(j) {
  const out = [];
  for (const sv of serverNames(j)) {
    const cells = j.runs.filter((x) => x.server === sv && x.result?.scenario === 'conns');
    if (!cells.length) continue;
    const points = new Map();
    for (const c of cells) {
      const r = c.result;
      const steps = r.steps?.length ? r.steps : [{ conns: r.conns, rss_kib: r.rss_after_kib, kib_per_conn: r.kib_per_conn }];
      for (const s of steps) {
        if (!points.has(s.conns)) points.set(s.conns, { rss: [], per: [] });
        points.get(s.conns).rss.push(s.rss_kib);
        points.get(s.conns).per.push(s.kib_per_conn);
      }
    }
    out.push({
      server: sv,
      before: median(cells.map((c) => c.result.rss_before_kib)),
      steps: [...points].sort((a, b) => a[0] - b[0]).map(([n, p]) => ({ conns: n, rss: median(p.rss), per: median(p.per) })),
      base: median(cells.map((c) => c.result.fit?.base_kib)),
      bytes: median(cells.map((c) => c.result.fit?.bytes_per_conn)),
    });
  }
  return out;
}

// Several results files as one: a (scenario, server) of a later file replaces the cells and medians
// of the earlier ones. sources: each file with its run's time, mode and command line.
export function merge(files) {
  const out = { runs: [], medians: {}, better: {}, servers: [], sources: [] };
  for (const { name, j } of files) {
    const pairs = new Set(j.runs.map((r) => `${r.scenario}\n${r.server}`));
    out.runs = out.runs.filter((r) => !pairs.has(`${r.scenario}\n${r.server}`)).concat(j.runs);
    for (const [k, med] of Object.entries(j.medians || {})) out.medians[k] = { ...out.medians[k], ...med };
    Object.assign(out.better, j.better || {});
    for (const s of j.servers || []) if (!out.servers.some((x) => x.name === s.name)) out.servers.push(s);
    out.sources.push({ file: name, started: j.started, finished: j.finished, wall_s: j.wall_s, reps: j.reps, quick: j.quick, args: j.args, parleyd: j.parleyd, base: j.base, scenarios: scenarioIds(j) });
  }
  return out;
}

// ---------------------------------------------------------------- plots

function gnuplotAvailable() {
  try {
    execFileSync('gnuplot', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const q = (s) => `'${String(s).replace(/'/g, "''")}'`;
const block = (name, lines) => `$${name} << EOD\n${lines.join('\n')}\nEOD\n`;
let FORMAT = 'svg';
const HEAD = (w, h) => `${FORMAT === 'png' ? `set terminal pngcairo size ${w},${h} noenhanced font 'sans,10'` : `set terminal svg size ${w},${h} dynamic noenhanced font 'sans,12' background rgb 'white'`}\nset grid\nset key top left\n`;

function latencyPlot(rows, out) {
  const scs = [...new Set(rows.map((r) => r.scenario))].filter((s) => s === 'load/fanout' || s === 'load/pairs');
  if (!scs.length) return null;
  let gp = HEAD(560 * scs.length, 420) + `set output ${q(out)}\nset multiplot layout 1,${scs.length}\nset logscale y\nset ylabel 'send to deliver, ms (log)'\nset xrange [-0.5:4.5]\n`;
  for (const sc of scs) {
    const rs = rows.filter((r) => r.scenario === sc);
    rs.forEach((r, i) => { gp += block(`d${i}`, PCTS.map(([label], k) => `${k} ${label} ${r.v[k] ?? 'NaN'}`)); });
    gp += `set title ${q(`${sc} (${rs[0].size})`)}\n`;
    gp += `plot ${rs.map((r, i) => `$d${i} using 1:3:xtic(2) with linespoints lw 2 pt 7 title ${q(r.server)}`).join(', ')}\n`;
  }
  return gp + 'unset multiplot\n';
}

function groupPlot(rows, out) {
  if (!rows.length) return null;
  const svs = [...new Set(rows.map((r) => r.server))];
  let gp = HEAD(1120, 420) + `set output ${q(out)}\nset multiplot layout 1,2\nset logscale x\nset xlabel 'members of the group (1 group, 4 publishers, window 8)'\nset format x '%g'\nset offsets graph 0.05, graph 0.05, 0, 0\n`;
  svs.forEach((s, i) => { gp += block(`g${i}`, rows.filter((r) => r.server === s).map((r) => `${r.members} ${r.dps ?? 'NaN'} ${r.cpu ?? 'NaN'}`)); });
  gp += `set title 'deliveries per second'\nset ylabel 'thousand deliveries/s'\nset yrange [0:*]\n`;
  gp += `plot ${svs.map((s, i) => `$g${i} using 1:($2/1000) with linespoints lw 2 pt 7 title ${q(s)}`).join(', ')}\n`;
  gp += `set title 'server CPU per delivery'\nset ylabel 'server CPU µs per delivery'\n`;
  gp += `plot ${svs.map((s, i) => `$g${i} using 1:3 with linespoints lw 2 pt 7 title ${q(s)}`).join(', ')}\n`;
  return gp + 'unset multiplot\n';
}

function connPlot(rows, out) {
  if (!rows.length) return null;
  let gp = HEAD(1120, 420) + `set output ${q(out)}\nset multiplot layout 1,2\nset xlabel 'idle authenticated WebSocket connections'\nset format x '%.0f'\nset offsets graph 0, graph 0.04, 0, 0\nset xrange [0:*]\n`;
  rows.forEach((r, i) => { gp += block(`c${i}`, [`0 ${r.before ?? 'NaN'} NaN`, ...r.steps.map((s) => `${s.conns} ${s.rss ?? 'NaN'} ${s.per ?? 'NaN'}`)]); });
  gp += `set title 'server RSS'\nset ylabel 'RSS, MiB (log)'\nset logscale y\n`;
  gp += `plot ${rows.map((r, i) => `$c${i} using 1:($2/1024) with linespoints lw 2 pt 7 title ${q(r.server)}`).join(', ')}\n`;
  gp += `set title 'RSS per connection (RSS after - before) / N'\nset ylabel 'KiB per connection (log)'\n`;
  gp += `plot ${rows.map((r, i) => `$c${i} using 1:3 with linespoints lw 2 pt 7 title ${q(r.server)}`).join(', ')}\n`;
  return gp + 'unset multiplot\n';
}

// Renders each script into dir; returns the names of the SVGs written.
function renderPlots(j, dir) {
  if (!gnuplotAvailable()) {
    console.error('report: gnuplot is missing (apt-get install gnuplot-nox; scripts/setup --test installs it): no plots');
    return [];
  }
  mkdirSync(dir, { recursive: true });
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'parley-report-'));
  const made = [];
  try {
    for (const [base, plot, rows] of [['latency', latencyPlot, latencyRows(j)], ['groupsize', groupPlot, groupRows(j)], ['conns', connPlot, connRows(j)]]) {
      const name = `${base}.${FORMAT}`;
      const gp = plot(rows, path.join(dir, name));
      if (!gp) continue;
      const f = path.join(tmp, `${base}.gp`);
      writeFileSync(f, gp);
      execFileSync('gnuplot', [f], { stdio: ['ignore', 'ignore', 'pipe'] });
      made.push(name);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return made;
}

// ---------------------------------------------------------------- the Markdown section

function table(head, rows) {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

// The command line that made the file: compare.mjs's arguments, as bench/run.sh takes them.
function runCommand(j, file) {
  if (!j.args) return null;
  const a = [...j.args];
  const i = a.indexOf('--base-label');
  if (i >= 0) { // run.sh --base REF became --base-bin PATH --base-label 'REF = sha'
    const ref = String(a[i + 1]).split(' = ')[0];
    const k = a.indexOf('--base-bin');
    a.splice(Math.max(i, k), 2);
    a.splice(Math.min(i, k), 2, '--base', ref);
  }
  const o = a.indexOf('--out');
  if (o >= 0) a[o + 1] = file;
  return `bench/run.sh ${a.map((x) => (/^[\w./,=:@%+~^-]+$/.test(x) ? x : q(x))).join(' ')}`;
}

export function section(j, file, plots, plotDir, docDir) {
  const servers = serverNames(j);
  const L = [];
  const rel = (p) => path.relative(docDir, p);
  L.push('## Latest results (generated by `make bench`)');
  L.push('');
  L.push('Written by `bench/report.mjs` from the results files below; `make bench` rewrites everything between the markers, the sections after it are written by hand.');
  const machine = j.runs.find((r) => r.result?.machine)?.result.machine;
  const srcs = j.sources || [{ file, started: j.started, finished: j.finished, wall_s: j.wall_s, reps: j.reps, quick: j.quick, args: j.args, parleyd: j.parleyd, base: j.base, scenarios: scenarioIds(j) }];
  L.push(`${machine ? `${machine.cpus} CPUs, Linux ${machine.kernel}; ` : ''}client and servers on the same machine; medians over rounds.`);
  for (const x of srcs)
    L.push(`- \`${x.file}\`: run ${x.started}${x.finished ? ` to ${x.finished}` : ''}${x.wall_s ? ` (${Math.floor(x.wall_s / 60)} min ${x.wall_s % 60} s wall)` : ''}${x.quick ? ', **quick mode** (smaller sizes, 2 s cells)' : ''}, ${x.reps} round(s); ${srcs.length > 1 ? `${x.scenarios.join(', ')}; ` : ''}parleyd: checkout ${x.parleyd?.checkout ?? '?'} (binary sha256 ${x.parleyd?.sha256_16 ?? '?'})${x.base ? `; parleyd-base: ${x.base.label || x.base.path}` : ''}.`);
  L.push('');
  L.push('The commands:');
  L.push('```sh');
  L.push('make build');
  for (const x of srcs)
    L.push(runCommand(x, x.file) || `# ${x.file}: the runner's arguments are not in that file (written before 2026-12-03); the cells below are exact`);
  L.push(`node bench/report.mjs ${srcs.map((x) => x.file).join(' ')}`);
  L.push('```');
  L.push('One cell of each scenario (the first round, parleyd; every cell\'s command is in the JSON, `runs[].cmd`):');
  L.push('```sh');
  for (const sc of scenarioIds(j)) {
    const c = j.runs.find((r) => r.scenario === sc && r.server === 'parleyd') || j.runs.find((r) => r.scenario === sc);
    if (c?.cmd) L.push(c.cmd.replace(/ --server \S+ --name parleyd$/, ''));
  }
  L.push('```');
  L.push('');

  // medians and ratios
  const withRatio = servers.includes('parleyd') ? servers.filter((s) => s !== 'parleyd') : [];
  const rows = [];
  for (const [key, med] of Object.entries(j.medians || {})) {
    const sp = key.indexOf(' ');
    const [sc, metric] = [key.slice(0, sp), key.slice(sp + 1)];
    rows.push([sc, metric, ...servers.map((s) => fmt(med[s])), ...withRatio.map((s) => (med[s] == null ? '' : ratio(med.parleyd, med[s]))), j.better?.[key] || guessBetter(metric)]);
  }
  L.push(`**Medians** (ratios parleyd / X):`);
  L.push('');
  L.push(table(['scenario', 'metric', ...servers, ...withRatio.map((s) => `parleyd/${s}`), 'better'], rows));
  L.push('');

  const lat = latencyRows(j);
  if (lat.length) {
    L.push('**Send-to-deliver latency**, ms (medians over rounds of each percentile):');
    L.push('');
    L.push(table(['scenario', 'size', 'server', ...PCTS.map(([l]) => l)], lat.map((r) => [r.scenario, r.size, r.server, ...r.v.map(fmt)])));
    L.push('');
    if (plots.includes(`latency.${FORMAT}`)) L.push(`![send-to-deliver latency percentiles](${rel(path.join(plotDir, `latency.${FORMAT}`))})`, '');
  }
  const gr = groupRows(j);
  if (gr.length) {
    L.push('**Fan-out against the group size** (1 group, 4 publishers with a window of 8 each):');
    L.push('');
    L.push(table(['members', 'server', 'deliveries/s', 'server CPU µs per delivery', 'rounds'], gr.map((r) => [fmt(r.members), r.server, fmt(r.dps), fmt(r.cpu), r.rounds])));
    L.push('');
    if (plots.includes(`groupsize.${FORMAT}`)) L.push(`![deliveries/s and CPU per delivery against the group size](${rel(path.join(plotDir, `groupsize.${FORMAT}`))})`, '');
  }
  const cr = connRows(j);
  if (cr.length) {
    L.push('**Idle connections** (server RSS after each step and a settle; KiB per connection = (RSS - RSS before) / N; the fit is least squares over RSS before and after each step, and the predictions extend it linearly):');
    L.push('');
    const trows = [];
    for (const r of cr) {
      for (const s of r.steps) trows.push([r.server, fmt(s.conns), fmt(s.rss / 1024), fmt(s.per), '', '']);
      if (r.bytes != null) {
        const at = (n) => fmt((r.base + (r.bytes / 1024) * n) / 1024);
        trows.push([r.server, 'fit', `${fmt(r.base / 1024)} MiB + N x ${fmt(r.bytes)} B`, '', at(1e5), at(1e6)]);
      }
    }
    L.push(table(['server', 'connections', 'RSS MiB', 'KiB per connection', 'fit: RSS MiB at 100,000', 'at 1,000,000'], trows));
    L.push('');
    if (plots.includes(`conns.${FORMAT}`)) L.push(`![server RSS against idle connections](${rel(path.join(plotDir, `conns.${FORMAT}`))})`, '');
  }
  const bad = j.runs.filter((r) => r.code !== 0);
  L.push(bad.length ? `Cells that reported problems (see the JSON): ${bad.map((b) => `round ${b.round} ${b.scenario} ${b.server} (exit ${b.code})`).join('; ')}.` : 'Every cell completed without a problem (every client got every message once and in order).');
  const other = j.runs.map((r) => (r.result?.cpu?.other_cpu_s != null && r.result.cpu.wall_s ? r.result.cpu.other_cpu_s / r.result.cpu.wall_s : null)).filter((x) => x != null);
  if (other.length) L.push(`Other processes used ${fmt(Math.min(...other))}-${fmt(Math.max(...other))} cores during the measured cells (median ${fmt(median(other))}).`);
  return L.join('\n');
}

// Replaces the generated section of doc (a string), or puts it in.
export function splice(doc, body) {
  const gen = `${BEGIN}\n${body}\n${END}`;
  // a marker counts only as a line of its own (the text may quote them, as this file's help does)
  const line = (m) => { const r = new RegExp(`^${m.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'gm'); return [...doc.matchAll(r)].map((x) => x.index); };
  const as = line(BEGIN), bs = line(END);
  if (as.length > 1 || bs.length > 1) throw new Error(`the markers ${BEGIN} / ${END} are in the document more than once`);
  const [a, b] = [as[0] ?? -1, bs[0] ?? -1];
  if (a >= 0 && b > a) return doc.slice(0, a) + gen + doc.slice(b + END.length);
  if (a >= 0 || b >= 0) throw new Error(`only one of the markers ${BEGIN} / ${END} is in the document, or they are in the wrong order`);
  const m = doc.search(/^## Results/m);
  return m >= 0 ? `${doc.slice(0, m)}${gen}\n\n${doc.slice(m)}` : `${doc.replace(/\n*$/, '\n\n')}${gen}\n`;
}

// ---------------------------------------------------------------- main

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values: opt, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      doc: { type: 'string', default: path.join(root, 'docs/BENCHMARKS.md') },
      plots: { type: 'string', default: path.join(root, 'docs/bench') },
      'no-plots': { type: 'boolean', default: false },
      format: { type: 'string', default: 'svg' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (opt.help || !positionals.length) {
    const text = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n');
    console.log(text.slice(1, text.findIndex((l) => l.startsWith('import '))).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
    process.exit(opt.help ? 0 : 2);
  }
  const files = [];
  for (const file of positionals) {
    if (!existsSync(file)) {
      console.error(`report: ${file} not found`);
      process.exit(2);
    }
    const j = JSON.parse(readFileSync(file, 'utf8'));
    if (!Array.isArray(j.runs)) {
      console.error(`report: ${file} is not a results file of bench/compare.mjs (no runs)`);
      process.exit(2);
    }
    const shown = path.isAbsolute(file) ? path.relative(root, file) : path.relative(root, path.resolve(file));
    files.push({ name: shown.startsWith('..') ? path.resolve(file) : shown, j });
  }
  const j = merge(files);
  if (!['svg', 'png'].includes(opt.format)) {
    console.error('report: --format is svg or png');
    process.exit(2);
  }
  FORMAT = opt.format;
  const plotDir = path.resolve(opt.plots);
  const plots = opt['no-plots'] ? [] : renderPlots(j, plotDir);
  const doc = readFileSync(opt.doc, 'utf8');
  writeFileSync(opt.doc, splice(doc, section(j, null, plots, plotDir, path.dirname(path.resolve(opt.doc)))));
  console.error(`report: ${opt.doc} regenerated from ${positionals.join(', ')}${plots.length ? `; plots: ${plots.map((p) => path.join(path.relative(root, plotDir), p)).join(', ')}` : ''}`);
}
