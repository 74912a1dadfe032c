// The soak test's pool-mode handler (bench/soak/soak.py): sleeps, reports
// progress, throws or kills its worker when asked, honours the abort signal.
interface Params {
  ms?: number;
  steps?: number;
  fail?: boolean;   // throw: the job fails, the worker lives on
  crash?: boolean;  // exit the worker: the job fails, the worker is replaced
  ignoreAbort?: boolean; // keep going after a cancel or timeout
}
interface Ctx {
  progress(current: number, total: number, message: string): void;
  signal: AbortSignal;
}

export default async function soak(params: Params, ctx: Ctx) {
  const steps = Math.max(1, params.steps ?? 3);
  const ms = params.ms ?? 20;
  for (let n = 1; n <= steps; n++) {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(resolve, ms / steps);
      if (!params.ignoreAbort) {
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(t);
          reject(new Error('aborted'));
        }, { once: true });
      }
    });
    ctx.progress(n, steps, `step ${n}`);
  }
  if (params.crash) process.exit(3);
  if (params.fail) throw new Error('asked to fail');
  return { ok: true, steps };
}
