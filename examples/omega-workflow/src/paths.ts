// Files in and out. Relative paths in params are relative to the app root
// (this folder), so `data/sample.csv` works whatever the current directory is.
// The app itself refuses no path: confining paths is tsbridge's job.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AbortError, WorkflowContext, WorkflowError, abortErrorFrom } from './context';

function isAppRoot(dir: string): boolean {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    return pkg.name === 'omega-workflow';
  } catch {
    return false;
  }
}

/** The app folder; falls back to the cwd if the code runs from elsewhere (e.g. a bundle). */
export const APP_ROOT: string = isAppRoot(path.resolve(__dirname, '..'))
  ? path.resolve(__dirname, '..')
  : process.cwd();

export function resolveAppPath(p: string): string {
  return path.isAbsolute(p) ? path.normalize(p) : path.resolve(APP_ROOT, p);
}

function statOrThrow(label: string, given: string): { abs: string; stat: fs.Stats } {
  const abs = resolveAppPath(given);
  try {
    return { abs, stat: fs.statSync(abs) };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new WorkflowError(`${label} not found: ${given}`);
    }
    throw new WorkflowError(`cannot read ${label} ${given}: ${(err as Error).message}`);
  }
}

/** Resolves an input file and fails with a clear message if it is missing. */
export function requireFile(label: string, given: string): string {
  const { abs, stat } = statOrThrow(label, given);
  if (!stat.isFile()) throw new WorkflowError(`${label} is not a file: ${given}`);
  return abs;
}

export function requireDir(label: string, given: string): string {
  const { abs, stat } = statOrThrow(label, given);
  if (!stat.isDirectory()) throw new WorkflowError(`${label} is not a folder: ${given}`);
  return abs;
}

// Temp files being written right now; main.ts removes them if it must exit early.
const partialFiles = new Set<string>();

export function removePartialFilesSync(): void {
  for (const file of partialFiles) fs.rmSync(file, { force: true });
  partialFiles.clear();
}

/**
 * Writes `data` to `given` atomically: first to `<name>.<pid>.partial`, then a
 * rename. On abort or error the partial file is removed, so a cancelled job
 * never leaves a half-written output behind. Returns the absolute path.
 */
export async function writeOutput(ctx: WorkflowContext, given: string, data: Uint8Array | string): Promise<string> {
  const target = resolveAppPath(given);
  const partial = `${target}.${process.pid}.partial`;
  partialFiles.add(partial);
  try {
    await fs.promises.mkdir(path.dirname(target), { recursive: true });
    await fs.promises.writeFile(partial, data, { signal: ctx.signal });
    if (ctx.signal.aborted) throw abortErrorFrom(ctx.signal);
    await fs.promises.rename(partial, target);
    return target;
  } catch (err) {
    await fs.promises.rm(partial, { force: true });
    if (ctx.signal.aborted && !(err instanceof AbortError)) throw abortErrorFrom(ctx.signal);
    throw err;
  } finally {
    partialFiles.delete(partial);
  }
}
