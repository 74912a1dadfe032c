// The soak test's spawn-mode program (bench/soak/soak.py). What it does is
// chosen by its parameters, so one workflow covers the paths that matter
// when things go wrong: progress, a slow end, a non-zero exit, a SIGTERM it
// ignores, a grandchild that escapes into its own session with an empty
// environment, a flood of output, a result over the IPC channel.
import { spawn } from 'node:child_process';

interface Params {
  ms?: number;          // how long to run
  steps?: number;       // PROGRESS lines over that time
  exit?: number;        // exit code at the end
  ignoreTerm?: boolean; // ignore SIGTERM (tsbridge must SIGKILL after kill_grace)
  grandchild?: boolean; // leave a setsid'd grandchild with an empty env behind
  floodKiB?: number;    // write this much plain output first
  ipc?: boolean;        // send the result over the IPC channel instead of stdout
}

const i = process.argv.indexOf('--params');
const p: Params = i >= 0 ? JSON.parse(process.argv[i + 1] ?? '{}') : {};
if (p.ignoreTerm) process.on('SIGTERM', () => {});
if (p.grandchild) {
  const g = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', 'soak-grandchild'], {
    detached: true,
    stdio: 'ignore',
    env: {},
  });
  g.unref();
}
if (p.floodKiB) {
  const line = 'x'.repeat(1023) + '\n';
  for (let k = 0; k < p.floodKiB; k++) process.stdout.write(line);
}
const steps = Math.max(1, p.steps ?? 3);
const ms = p.ms ?? 50;
let n = 0;
const tick = setInterval(() => {
  n += 1;
  console.log(`PROGRESS: ${n}/${steps} - step ${n}`);
  if (n < steps) return;
  clearInterval(tick);
  const result = { ok: true, steps, pid: process.pid };
  if (p.ipc && process.send) {
    process.send({ id: 'r', type: 'result', payload: result, timestamp: Date.now() });
  } else {
    console.log(`RESULT: ${JSON.stringify(result)}`);
  }
  if (p.ignoreTerm || p.grandchild) {
    // Keep the event loop alive until tsbridge ends the tree (timeout), or
    // exit after the result when asked for an exit code.
    if (p.exit === undefined) return;
  }
  process.exitCode = p.exit ?? 0;
  if (p.ipc) setTimeout(() => process.exit(p.exit ?? 0), 10);
}, ms / steps);
