// What a workflow gets to report progress and notice cancellation.
//
// The same workflow code runs in two ways:
//   - main.ts (CLI, spawn mode): ctx writes protocol lines to stdout, and
//     SIGTERM aborts ctx.signal;
//   - handlers.ts (tsbridge pool mode): the worker host passes its own ctx.
import { setImmediate as yieldToEventLoop, setTimeout as sleep } from 'node:timers/promises';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface WorkflowContext {
  progress(current: number, total: number, message: string): void;
  log(level: LogLevel, message: string): void;
  /** Fired on cancel or timeout; workflows check it between steps. */
  signal: AbortSignal;
  /** The workflow name, when the caller knows it (pool mode). */
  workflow?: string;
}

export type Params = Record<string, unknown>;

export type Workflow<R = unknown> = (params: Params, ctx: WorkflowContext) => Promise<R>;

/** Thrown when ctx.signal is aborted; `name` is 'AbortError' like DOM/Node aborts. */
export class AbortError extends Error {
  readonly code = 'ABORT_ERR';
  constructor(message = 'workflow aborted') {
    super(message);
    this.name = 'AbortError';
  }
}

/** A bad or missing parameter, or an input the workflow cannot use. */
export class WorkflowError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkflowError';
  }
}

export function abortErrorFrom(signal: AbortSignal): AbortError {
  const reason: unknown = signal.reason;
  if (reason instanceof AbortError) return reason;
  const why = reason instanceof Error ? reason.message : typeof reason === 'string' ? reason : '';
  return new AbortError(why ? `workflow aborted: ${why}` : 'workflow aborted');
}

export function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw abortErrorFrom(signal);
}

/**
 * Called between steps: throws AbortError if the job was cancelled, waits
 * `delayMs` (the demo/test knob that makes a job slow), and yields to the
 * event loop so a pending SIGTERM is handled even when delayMs is 0.
 */
export async function checkpoint(ctx: WorkflowContext, delayMs = 0): Promise<void> {
  throwIfAborted(ctx.signal);
  try {
    if (delayMs > 0) await sleep(delayMs, undefined, { signal: ctx.signal });
    else await yieldToEventLoop(undefined, { signal: ctx.signal });
  } catch (err) {
    if (ctx.signal.aborted) throw abortErrorFrom(ctx.signal);
    throw err;
  }
  throwIfAborted(ctx.signal);
}

/** Fills in whatever a caller left out of ctx (handy in tests and REPLs). */
export function withDefaults(ctx: Partial<WorkflowContext> | undefined): WorkflowContext {
  return {
    progress: ctx?.progress?.bind(ctx) ?? (() => {}),
    log: ctx?.log?.bind(ctx) ?? (() => {}),
    signal: ctx?.signal ?? new AbortController().signal,
    workflow: ctx?.workflow,
  };
}
