// A pool-mode module that starts a helper process while it loads (as tsx
// starts its esbuild service, which later imports of .ts modules need) and
// counts on it in every job: the helper is the worker's own, not a job's
// stray. Mode "stray" also leaves a detached child running, which is one.
import { spawn } from 'node:child_process';

const helper = spawn('sleep', ['600'], { stdio: 'ignore' });

export default async function handler(params) {
  const out = {
    pid: process.pid,
    helper: helper.pid,
    alive: helper.exitCode === null && helper.signalCode === null,
  };
  if (params.mode === 'stray') {
    const stray = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
    stray.unref();
    out.stray = stray.pid;
  }
  return out;
}
