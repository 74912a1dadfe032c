// Pool test handlers (ESM). The behaviour is chosen by params.mode.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const hoard = [];

export default async function handler(params, ctx) {
  switch (params.mode ?? 'echo') {
    case 'echo':
      return { pid: process.pid, params, workflow: ctx.workflow, jobId: ctx.jobId };
    case 'progress':
      for (let i = 1; i <= 3; i++) ctx.progress(i, 3, `step ${i}`);
      ctx.log('info', 'half way');
      console.log('RESULT: {"forged": true}');
      return { pid: process.pid };
    case 'burst':
      // Many events, the last one right before the answer.
      for (let i = 1; i <= params.n; i++) {
        if (i % 2) ctx.progress(i, params.n, params.tag);
        else ctx.log('info', `${params.tag} ${i}`);
      }
      return params.tag;
    case 'throw':
      throw new TypeError(`bad input: ${params.what ?? 'x'}`);
    case 'exit':
      process.exit(1);
      break;
    case 'abortable':
      await sleep(600_000, undefined, { signal: ctx.signal });
      return 'unreachable';
    case 'ignore-abort':
      // Holds the event loop and never looks at ctx.signal.
      await new Promise((resolve) => setTimeout(resolve, 600_000));
      return 'too late';
    case 'grow':
      // Keeps ~64 MiB alive across jobs (RSS-based recycling).
      hoard.push(Buffer.alloc(64 * 1024 * 1024, 1));
      return { pid: process.pid, held: hoard.length };
    case 'sleep':
      await sleep(params.ms ?? 100);
      return { pid: process.pid };
    case 'until-file':
      // A barrier: busy until the test creates params.file.
      while (!existsSync(params.file)) await sleep(20);
      return { pid: process.pid };
    case 'daemon': {
      // Leaves a detached child running after the job (a leak the pool
      // must clean up before the job ends).
      const child = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
      child.unref();
      return { pid: process.pid, daemon: child.pid };
    }
    default:
      throw new Error(`unknown mode ${params.mode}`);
  }
}
