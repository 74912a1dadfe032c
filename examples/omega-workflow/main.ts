// Omega workflow CLI: the "existing program" tsbridge runs in spawn mode.
//
//   main.ts --workflow <type> --params <json> --output-format json
//
// Stdout speaks tsbridge's line protocol (SPEC §2):
//   [<ISO time>] INFO: <message>           log lines
//   PROGRESS: <current>/<total> - <message> progress
//   RESULT_START / <json lines> / RESULT_END  the result
// Exit 0 on success; 1 with "[<time>] ERROR: <message>" on stderr on failure;
// on SIGTERM (or SIGINT) stop, remove partial output, exit 128 + signal number.
import { AbortError, LogLevel, WorkflowContext, WorkflowError, runWorkflow } from './src';
import { removePartialFilesSync } from './src/paths';

const USAGE = 'usage: main.ts --workflow <data-analysis|image-processing|video-generation> --params <json> [--output-format json]';

function logLine(level: LogLevel, message: string): string {
  return `[${new Date().toISOString()}] ${level.toUpperCase()}: ${message}\n`;
}

function parseArgs(argv: string[]): { workflow: string; params: Record<string, unknown> } {
  let workflow = '';
  let paramsText = '{}';
  let format = 'json';
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => inline ?? argv[++i] ?? '';
    if (flag === '--workflow') workflow = value();
    else if (flag === '--params') paramsText = value();
    else if (flag === '--output-format') format = value();
    else throw new WorkflowError(`unknown argument ${argv[i]}\n${USAGE}`);
  }
  if (!workflow) throw new WorkflowError(`missing --workflow\n${USAGE}`);
  if (format !== 'json') throw new WorkflowError(`unsupported --output-format ${format} (only json)`);
  let params: unknown;
  try {
    params = JSON.parse(paramsText);
  } catch (err) {
    throw new WorkflowError(`--params is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof params !== 'object' || params === null || Array.isArray(params)) {
    throw new WorkflowError('--params must be a JSON object');
  }
  return { workflow, params: params as Record<string, unknown> };
}

async function main(): Promise<number> {
  const controller = new AbortController();
  let stoppedBy: 'SIGTERM' | 'SIGINT' | undefined;
  const exitCodeFor = (sig: 'SIGTERM' | 'SIGINT') => (sig === 'SIGTERM' ? 143 : 130);
  const onSignal = (sig: 'SIGTERM' | 'SIGINT') => {
    if (stoppedBy) return;
    stoppedBy = sig;
    controller.abort(new AbortError(`received ${sig}`));
    // If a step does not notice the abort soon, clean up and leave anyway.
    setTimeout(() => {
      removePartialFilesSync();
      process.stdout.write(logLine('warn', `${sig}: work did not stop in time, exiting`));
      process.exit(exitCodeFor(sig));
    }, 3000).unref();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // Reader gone (e.g. `| head`): stop like a program killed by SIGPIPE would.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    removePartialFilesSync();
    process.exit(141);
  });

  const ctx: WorkflowContext = {
    signal: controller.signal,
    progress: (current, total, message) => process.stdout.write(`PROGRESS: ${current}/${total} - ${message}\n`),
    log: (level, message) => process.stdout.write(logLine(level, message)),
  };

  try {
    const { workflow, params } = parseArgs(process.argv.slice(2));
    ctx.log('info', `starting ${workflow} (pid ${process.pid})`);
    const started = Date.now();
    const result = await runWorkflow(workflow, params, ctx);
    ctx.log('info', `${workflow} finished in ${Date.now() - started} ms`);
    process.stdout.write(`RESULT_START\n${JSON.stringify(result, null, 2)}\nRESULT_END\n`);
    return 0;
  } catch (err) {
    if (stoppedBy) {
      removePartialFilesSync();
      ctx.log('warn', `stopped by ${stoppedBy}; partial output removed`);
      return exitCodeFor(stoppedBy);
    }
    const message = err instanceof WorkflowError ? err.message : (err as Error).stack ?? String(err);
    process.stderr.write(logLine('error', message));
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
