// A TypeScript pool module: types to strip, a default export, and a named
// export per workflow. Under tsx this package is CommonJS, so the host finds
// the default as mod.default.default.
interface Ctx {
  progress(current: number, total: number, message: string): void;
  log(level: 'debug' | 'info' | 'warn' | 'error', message: string): void;
  signal: AbortSignal;
  workflow: string;
  jobId: string;
}

type Params = { name?: string; n?: number };

enum Kind {
  Greeting = 'greeting',
}

export default async function handle(params: Params, ctx: Ctx): Promise<{ kind: Kind; text: string; pid: number; workflow: string }> {
  ctx.progress(1, 1, 'typed');
  return { kind: Kind.Greeting, text: `hello ${params.name ?? 'world'}`, pid: process.pid, workflow: ctx.workflow };
}

export async function sumNumbers(params: Params): Promise<number> {
  const n: number = params.n ?? 0;
  return (n * (n + 1)) / 2;
}
