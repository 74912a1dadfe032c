// A hostile pool handler for `limits.pid_namespace` (pool_pid_namespace.rs):
// it lists every process it can see in /proc, and leaves processes running
// after its job (a child of the worker, and a setsid daemon whose parent
// exits). `marks` are unique sleep durations that name what it starts.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

type Params = { mode?: 'echo' | 'list' | 'leave' | 'hold'; marks?: string[]; file?: string };
type Proc = { pid: number; cmdline: string };

function processes(): Proc[] {
  const out: Proc[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').join(' ').trim();
    } catch {
      continue; // ended meanwhile
    }
    out.push({ pid: Number(name), cmdline });
  }
  return out;
}

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export default async function handle(params: Params): Promise<{ pid: number; procs?: Proc[] }> {
  const marks = params.marks ?? [];
  switch (params.mode ?? 'list') {
    case 'echo':
      return { pid: process.pid };
    case 'list':
      return { pid: process.pid, procs: processes() };
    case 'leave':
    case 'hold': {
      spawn('sleep', [marks[0]], { stdio: 'ignore' }).unref();
      // setsid (detached), then the shell exits: its sleep is an orphan in
      // a session of its own.
      spawn('sh', ['-c', `sleep ${marks[1]} & exit 0`], { detached: true, stdio: 'ignore' }).unref();
      await until('both left running', () =>
        marks.every((m) => processes().some((p) => p.cmdline === `sleep ${m}`)),
      );
      if (params.mode === 'hold') await until('the barrier file', () => existsSync(params.file ?? ''));
      return { pid: process.pid };
    }
    default:
      throw new Error(`unknown mode ${params.mode}`);
  }
}
