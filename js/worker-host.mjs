// tsbridge pool worker host (SPEC §3, docs/design/pool.md).
//
// Started by tsbridge as
//   node [--import <tsx loader> | -r ts-node/register] worker-host.mjs <module> [--dev]
// with Node's IPC channel open (NODE_CHANNEL_FD). It loads the workflow module
// ONCE, answers pings once it is loaded, and serves jobs one at a time over
// process.on('message') until the channel closes.
//
// Every message is the envelope {id, type, payload, timestamp} of SPEC §2.3,
// and every exchange is a request from tsbridge answered by a `response` or
// an `error` with the same id (tsbridge's IPC layer correlates them):
//   {type:"request", id, payload:{op:"ping"}}
//       -> {type:"response", id, payload:{op:"pong", ready, pid, exports, node, rss, heapUsed, busy, jobs, uptimeMs}}
//   {type:"request", id, payload:{op:"run", jobId, workflow, params}}
//       -> {type:"progress", id, payload:{current, total, message}}   (ctx.progress)
//       -> {type:"log",      id, payload:{level, message}}            (ctx.log, console.*)
//       -> {type:"response", id, payload:{value:<the handler's value>, events}}  or
//          {type:"error",    id, payload:{message, name, aborted, stack?, events}}
//   `events` counts the job's progress/log envelopes: tsbridge forwards that
//   many before it reports the answer (they travel on another path there).
//   {type:"request", id, payload:{op:"cancel", jobId, reason}}
//       -> {type:"response", id, payload:{op:"cancel", jobId, found}}
// Messages that arrive while the module loads are queued by Node until the
// listener exists, so the first ping's answer means "loaded and serving".
// Under an ESM loader (tsx) the host first transpiles worker-host-warm.cts
// and .mts (beside it, if present), so that tsx's esbuild services start
// before `ready` (see warmLoader).
// If the module cannot be loaded (or exports no function) the host sends
//   {type:"log", id:"fatal", payload:{level:"error", message, fatal:true}}
// and exits 78.
//
// One job at a time per worker, on purpose: a job that must be killed (timeout,
// ignored cancel) or that crashes the process takes down only itself; console
// output, RSS growth and the AbortSignal are attributable to exactly one job;
// and a CPU-bound handler blocks the event loop anyway, so concurrency inside
// one process would not add throughput. Concurrency comes from more workers.
//
// stdout is not the protocol here: console.* inside a job becomes `log`
// envelopes of that job (so a "RESULT: ..." printed by a handler is inert
// text); outside a job it goes to stderr.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { format } from 'node:util';
import v8 from 'node:v8';

const EXIT_FATAL = 78; // EX_CONFIG: the module could not be loaded or has no handler
const EXIT_NO_CHANNEL = 64;

const args = process.argv.slice(2);
const dev = args.includes('--dev') || process.env.TSBRIDGE_WORKER_DEV === '1';
const modulePath = args.find((a) => !a.startsWith('--'));
const startedAt = Date.now();

if (typeof process.send !== 'function') {
  process.stderr.write('tsbridge worker host: no IPC channel (start it with NODE_CHANNEL_FD set)\n');
  process.exit(EXIT_NO_CHANNEL);
}

/** The job being served, or null. */
let current = null;
let jobsServed = 0;

function envelope(type, id, payload) {
  return { id: id ?? null, type, payload: payload === undefined ? null : payload, timestamp: Date.now() };
}

function send(type, id, payload) {
  if (!process.connected) return false;
  try {
    process.send(envelope(type, id, payload));
    return true;
  } catch (err) {
    // JSON.stringify failed (BigInt, circular): say so instead of the value.
    if (type === 'response') {
      process.send(
        envelope('error', id, {
          message: `result is not JSON-serializable: ${err && err.message ? err.message : String(err)}`,
          name: 'TypeError',
          aborted: false,
          events: payload && typeof payload.events === 'number' ? payload.events : 0,
        }),
      );
      return false;
    }
    throw err;
  }
}

function errorPayload(err, aborted) {
  const isErr = err !== null && typeof err === 'object';
  const message = isErr && typeof err.message === 'string' ? err.message : String(err);
  const payload = {
    message,
    name: isErr && typeof err.name === 'string' ? err.name : 'Error',
    aborted: Boolean(aborted),
  };
  if (dev && isErr && typeof err.stack === 'string') payload.stack = err.stack;
  return payload;
}

// console.* -> log envelopes of the current job; stderr outside a job.
const consoleLevels = { log: 'info', info: 'info', debug: 'debug', trace: 'debug', warn: 'warn', error: 'error' };
for (const [method, level] of Object.entries(consoleLevels)) {
  console[method] = (...parts) => {
    if (current && !current.settled) {
      current.events += 1;
      send('log', current.id, { level, message: format(...parts) });
    } else {
      process.stderr.write(format(...parts) + '\n');
    }
  };
}

/** Whether node runs with an ESM loader (`--import` / `--loader`, e.g. tsx), here or in NODE_OPTIONS. */
function hasEsmLoader() {
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  return flags.some((a) => /^--(import|loader|experimental-loader)(=|$)/.test(a));
}

/**
 * Under an ESM loader (tsx), transpiles the two tiny modules shipped beside
 * this file before the worker answers `ready`. tsx starts an esbuild service
 * process on its first transform, one per module format and thread: a
 * CommonJS module required, the same imported, an ES module imported. Started
 * now, they are the worker's own helpers (tsbridge keeps what the worker
 * started before `ready`); started by a job that imports TypeScript lazily,
 * the per-job sweep would kill them as that job's strays, and every later
 * job's transform would fail ("The service is no longer running"). A host
 * copy installed without the files skips this.
 */
async function warmLoader() {
  if (!hasEsmLoader()) return;
  const here = path.dirname(fileURLToPath(import.meta.url));
  const cts = path.join(here, 'worker-host-warm.cts');
  const mts = path.join(here, 'worker-host-warm.mts');
  if (!existsSync(cts) || !existsSync(mts)) return;
  const failed = (err) => {
    // A loader that does not know TypeScript: nothing to warm this way.
    if (dev) process.stderr.write(`tsbridge worker host: loader warm-up: ${err && err.message ? err.message : String(err)}\n`);
  };
  try {
    createRequire(cts)(cts);
  } catch (err) {
    failed(err);
  }
  // The two imports transpile in parallel (each through its own service).
  const imports = [import(pathToFileURL(cts).href), import(pathToFileURL(mts).href)];
  for (const r of await Promise.allSettled(imports)) if (r.status === 'rejected') failed(r.reason);
}

/** Loads the module: import() first (ESM, or CJS/TS through a loader), require() for extensions only a require hook knows (ts-node/register). */
async function loadModule(file) {
  const abs = path.resolve(file);
  try {
    return await import(pathToFileURL(abs).href);
  } catch (err) {
    const require = createRequire(abs);
    const ext = path.extname(abs);
    if (err && err.code === 'ERR_UNKNOWN_FILE_EXTENSION' && Object.hasOwn(require.extensions, ext)) {
      const exports = require(abs);
      return { default: exports, ...(exports !== null && typeof exports === 'object' ? exports : {}) };
    }
    throw err;
  }
}

/** The default handler after CommonJS interop: ESM `export default fn`, CJS `module.exports = fn`, or TS-compiled-to-CJS `exports.default = fn` (mod.default.default). */
function defaultHandler(ns) {
  const d = ns.default;
  if (typeof d === 'function') return d;
  if (d !== null && typeof d === 'object' && typeof d.default === 'function') return d.default;
  return null;
}

function namedExport(ns, name) {
  if (typeof ns[name] === 'function') return ns[name];
  const d = ns.default;
  if (d !== null && (typeof d === 'object' || typeof d === 'function') && name !== 'default' && typeof d[name] === 'function') {
    return d[name];
  }
  return null;
}

function camelCase(name) {
  return String(name).replace(/[-_.\s]+([a-zA-Z0-9])/g, (_, c) => c.toUpperCase());
}

/** The handler for a workflow: a named export (camelCase of the name, then the exact name), else the default export. */
function findHandler(ns, workflow) {
  if (typeof workflow === 'string' && workflow) {
    const named = namedExport(ns, camelCase(workflow)) ?? namedExport(ns, workflow);
    if (named) return named;
  }
  return defaultHandler(ns);
}

function exportedFunctions(ns) {
  const names = new Set();
  for (const [k, v] of Object.entries(ns)) if (typeof v === 'function') names.add(k);
  const d = ns.default;
  if (d !== null && typeof d === 'object') for (const [k, v] of Object.entries(d)) if (typeof v === 'function') names.add(k);
  if (defaultHandler(ns)) names.add('default');
  return [...names].sort();
}

function abortReason(reason) {
  if (reason === 'timeout') return new DOMException('job timed out', 'TimeoutError');
  if (reason === 'shutdown') return new DOMException('worker shutting down', 'AbortError');
  return new DOMException('job cancelled', 'AbortError');
}

/** Handler per workflow name, looked up once (the module namespace does not change). */
const handlers = new Map();

function handlerFor(ns, workflow) {
  let handler = handlers.get(workflow);
  if (handler === undefined) {
    handler = findHandler(ns, workflow);
    handlers.set(workflow, handler);
  }
  return handler;
}

/**
 * One job. Its AbortController is made only when the handler reads
 * `ctx.signal` or the job is aborted: most handlers never look, and a
 * signal costs microseconds to make (and more to collect).
 */
class Job {
  constructor(id, jobId) {
    this.id = id;
    this.jobId = jobId;
    this.settled = false;
    this.events = 0;
    this.controller = null;
    this.aborted = false;
  }

  signal() {
    if (this.controller === null) this.controller = new AbortController();
    return this.controller.signal;
  }

  abort(reason) {
    this.aborted = true;
    this.signal();
    this.controller.abort(reason);
  }

  progress(cur, total, message) {
    if (this.settled) return;
    this.events += 1;
    send('progress', this.id, { current: Number(cur) || 0, total: Number(total) || 0, message: message == null ? '' : String(message) });
  }

  log(level, message) {
    if (this.settled) return;
    this.events += 1;
    send('log', this.id, { level: String(level || 'info'), message: message == null ? '' : String(message) });
  }
}

/**
 * A job's `ctx`: frozen, and bound to its job (calls after the job settled
 * are dropped, so a stray timer cannot speak for the next job; `progress` and
 * `log` work detached). `signal` is a getter on the (frozen) prototype, so
 * the handler's first read makes the job's AbortController. A class instance
 * frozen in its constructor takes V8's fast paths, where a frozen object
 * literal with an own getter went through runtime calls on every job.
 */
class JobContext {
  #job;

  constructor(job, workflow) {
    this.#job = job;
    this.jobId = job.jobId;
    this.workflow = workflow;
    this.progress = (cur, total, message) => job.progress(cur, total, message);
    this.log = (level, message) => job.log(level, message);
    Object.freeze(this);
  }

  get signal() {
    return this.#job.signal();
  }
}
Object.freeze(JobContext.prototype);

function runJob(ns, id, payload) {
  if (current) {
    send('error', id, { message: `worker busy with job ${current.jobId}`, name: 'BusyError', aborted: false });
    return;
  }
  const jobId = payload.jobId == null ? String(id) : String(payload.jobId);
  const job = new Job(id, jobId);
  current = job;
  const workflow = typeof payload.workflow === 'string' ? payload.workflow : '';
  const ctx = new JobContext(job, workflow);
  // No async function and no await here: a job's answer goes out from a
  // plain promise callback (one suspended async frame less per job).
  let value;
  try {
    const handler = handlerFor(ns, workflow);
    if (!handler) throw new TypeError(`no handler for workflow "${workflow}": export a function named ${camelCase(workflow)} or a default function`);
    value = handler(payload.params ?? {}, ctx);
  } catch (err) {
    settle(job, 'error', err);
    return;
  }
  if (value instanceof Promise) {
    value.then(
      (v) => settle(job, 'response', v),
      (err) => settle(job, 'error', err),
    );
  } else if (value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function') {
    // Another thenable: adopted as `await` would (its `then` runs later, guarded).
    Promise.resolve(value).then(
      (v) => settle(job, 'response', v),
      (err) => settle(job, 'error', err),
    );
  } else {
    // A plain value: one microtask later, as `await` would (what the handler
    // queued before returning still counts for this job).
    queueMicrotask(() => settle(job, 'response', value));
  }
}

/** Ends a job once: its answer, with how many progress/log envelopes it sent. */
function settle(job, type, outcome) {
  if (job.settled) return;
  // How many progress/log envelopes the job sent: tsbridge forwards that many
  // (they reach it on another path than the answer) before it reports the end.
  const answer = type === 'response' ? { value: outcome === undefined ? null : outcome, events: job.events } : errorPayload(outcome, job.aborted);
  answer.events = job.events;
  job.settled = true;
  if (current === job) current = null;
  jobsServed += 1;
  send(type, job.id, answer);
}

function handleRequest(ns, msg) {
  const payload = msg.payload ?? {};
  switch (payload.op) {
    case 'run':
      void runJob(ns, msg.id, payload);
      return;
    case 'cancel': {
      const found = current !== null && !current.settled && (payload.jobId == null || String(payload.jobId) === current.jobId);
      if (found) current.abort(abortReason(payload.reason));
      send('response', msg.id, { op: 'cancel', jobId: payload.jobId ?? null, found });
      return;
    }
    case 'ping': {
      // RSS comes from /proc/self/statm, which a Landlock-sandboxed worker
      // may not read: then report heap only (RSS recycling is off for it,
      // the cgroup's memory limit still applies).
      let mem;
      try {
        mem = process.memoryUsage();
      } catch {
        mem = { rss: null, heapUsed: v8HeapUsed() };
      }
      send('response', msg.id, {
        op: 'pong',
        ready: true,
        pid: process.pid,
        exports: exportedNames,
        node: process.version,
        rss: mem.rss,
        heapUsed: mem.heapUsed,
        busy: current !== null,
        jobs: jobsServed,
        uptimeMs: Date.now() - startedAt,
      });
      return;
    }
    default:
      send('error', msg.id, { message: `unknown op ${JSON.stringify(payload.op)}`, name: 'ProtocolError', aborted: false });
  }
}

let exportedNames = [];

function fatal(message, err) {
  const text = dev && err && err.stack ? `${message}\n${err.stack}` : message;
  process.stderr.write(`tsbridge worker host: ${text}\n`);
  const env = envelope('log', 'fatal', { level: 'error', message: text, fatal: true });
  if (process.connected) {
    setTimeout(() => process.exit(EXIT_FATAL), 2000).unref();
    process.send(env, () => process.exit(EXIT_FATAL));
  }
  else process.exit(EXIT_FATAL);
}

async function main() {
  if (!modulePath) {
    fatal('usage: worker-host.mjs <module path> [--dev]');
    return;
  }
  // The warm-up runs while the module loads; both end before `ready`.
  const warmed = warmLoader();
  let ns;
  try {
    ns = await loadModule(modulePath);
    await warmed;
  } catch (err) {
    fatal(`cannot load ${modulePath}: ${err && err.message ? err.message : String(err)}`, err);
    return;
  }
  exportedNames = exportedFunctions(ns);
  if (exportedNames.length === 0) {
    fatal(`${modulePath} exports no handler function (expected a default export or one named per workflow)`);
    return;
  }
  process.on('message', (msg) => {
    if (msg && msg.type === 'request' && msg.payload && typeof msg.payload === 'object') handleRequest(ns, msg);
  });
  // The parent closed the channel: end now, whatever a handler still holds open.
  process.on('disconnect', () => {
    if (current) current.abort(abortReason('shutdown'));
    process.exit(0);
  });
}

// Crashes inside a handler's stray callbacks: tell tsbridge which job, then die
// (tsbridge fails that job and replaces this worker).
process.on('uncaughtException', (err) => {
  const message = err && err.message ? err.message : String(err);
  process.stderr.write(`tsbridge worker host: uncaught exception: ${dev && err && err.stack ? err.stack : message}\n`);
  if (current && process.connected) {
    setTimeout(() => process.exit(70), 2000).unref();
    process.send(envelope('log', current.id, { level: 'error', message: `uncaught exception: ${message}` }), () => process.exit(70));
    return;
  }
  process.exit(70);
});

await main();

function v8HeapUsed() {
  try {
    return v8.getHeapStatistics().used_heap_size;
  } catch {
    return null;
  }
}
