// make soak: the crash-consistency runs, then the soak; writes tests/soak/last-report.md and
// exits 0 only if every check held.
//   node soak/main.mjs [crash] [soak]     (both by default)
//   CRASH_REPS (20)   kill -9 runs on SQLite;  CRASH_PG (1): one more on PostgreSQL (0: none)
//   SOAK_MINUTES (10), SOAK_CLIENTS (1000) and the rest: see soak.mjs
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { boundedRun, withPostgres, sqliteTemplate } from './crash.mjs';
import { rmSync } from 'node:fs';
import { soak, soakReport } from './soak.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const what = process.argv.slice(2);
const doCrash = !what.length || what.includes('crash');
const doSoak = !what.length || what.includes('soak');
const log = (s) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);

// A hard bound on the whole run, whatever happens inside.
const minutes = Number(process.env.SOAK_MINUTES || 10);
const hard = setTimeout(() => { log('soak: hard time bound reached, exiting'); process.exit(3); },
  (40 + (doSoak ? minutes * 2 + 15 : 0)) * 60000);
hard.unref();

const lines = [`# Soak and crash report`, '', `Written by \`make soak\` at ${new Date().toISOString()} ` +
  `(parleyd: ${process.env.PARLEYD || 'build/release/parleyd'}).`, ''];
let ok = true;

if (doCrash) {
  const reps = Number(process.env.CRASH_REPS || 20);
  const runs = [];
  let template = null;
  try { template = await sqliteTemplate(); } catch (e) {
    runs.push({ rep: 0, store: 'SQLite', ok: false, problems: [`setup failed: ${e.message}`] });
  }
  for (let rep = 1; template && rep <= reps; rep++) runs.push(await boundedRun({ rep, template, log }));
  if (template) rmSync(template.dir, { recursive: true, force: true });
  if (process.env.CRASH_PG !== '0') {
    try {
      runs.push(await withPostgres((pgUrl) => boundedRun({ rep: 1, pgUrl, log })));
    } catch (e) {
      runs.push({ rep: 1, store: 'PostgreSQL', ok: false, problems: [`could not start PostgreSQL: ${e.message}`] });
    }
  }
  lines.push('## Crash consistency (kill -9 under load, restart, read back)', '',
    'Per run: messages sent, acked before the kill (of which over HTTP), stored after the restart; ' +
    'acked messages found exactly once / missing / stored twice / seq holes / wrong seq or body; then every ' +
    'unacked message resent: stored exactly once out of all sent.', '',
    '| store | run | kill after ms | sent | acked (HTTP) | stored | found | missing | dups | holes | mismatched | resent | after resend | s | result |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of runs) {
    const a = r.afterRetry;
    lines.push(`| ${r.store} | ${r.rep} | ${r.killAfterMs ?? '-'} | ${r.sent ?? '-'} | ${r.acked ?? '-'} (${r.ackedHttp ?? '-'}) | ${r.stored ?? '-'} | ${r.found ?? '-'} | ` +
      `${r.missing ?? '-'} | ${r.dups ?? '-'} | ${r.holes ?? '-'} | ${r.mismatched ?? '-'} | ${r.retried ?? '-'} | ` +
      `${a ? `${a.found}/${a.expected}, dups ${a.dups}, holes ${a.holes}` : '-'} | ${r.secs ? r.secs.toFixed(1) : '-'} | ${r.ok ? 'ok' : 'FAIL: ' + r.problems.join('; ')} |`);
  }
  const bad = runs.filter((r) => !r.ok).length;
  lines.push('', `${runs.length - bad} of ${runs.length} runs passed.`, '');
  if (bad) ok = false;
}

if (doSoak) {
  const res = await soak({ log });
  lines.push(...soakReport(res));
  if (!res.ok) ok = false;
}

lines.push(`**Result: ${ok ? 'PASS' : 'FAIL'}**`, '');
writeFileSync(path.join(here, 'last-report.md'), lines.join('\n'));
log(`soak: report in tests/soak/last-report.md: ${ok ? 'PASS' : 'FAIL'}`);
process.exit(ok ? 0 : 1);
