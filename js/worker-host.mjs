// tsbridge pool worker host (SPEC §3, docs/design/pool.md).
//
// Started by tsbridge as
//   node [--import <tsx loader> | -r ts-node/register] worker-host.mjs <module> [--dev]
// with Node's IPC channel open (NODE_CHANNEL_FD). It loads the workflow module
// ONCE, announces itself ready, then serves jobs one at a time over
// process.on('message') until the channel closes.
//
// Every message is the envelope {id, type, payload, timestamp} of SPEC §2.3.
//   tsbridge -> host   {type:"request", id:<job id>,  payload:{op:"run", workflow, params}}
//                      {type:"request", id:<req id>,  payload:{op:"cancel", jobId, reason}}
//                      {type:"request", id:<req id>,  payload:{op:"ping"}}
//   host -> tsbridge   {type:"response", id:"ready",  payload:{op:"ready", pid, exports, node}}
//                      {type:"error",    id:"ready",  payload:{op:"fatal", message, stack?}}  then exit 78
//                      {type:"progress", id:<job id>, payload:{current, total, message}}
//                      {type:"log",      id:<job id>, payload:{level, message}}
//                      {type:"result",   id:<job id>, payload:<the handler's value>}
//                      {type:"error",    id:<job id>, payload:{message, name, aborted, stack?}}
//                      {type:"response", id:<req id>, payload:{op:"pong", rss, heapUsed, busy, jobs, uptimeMs}}
//                      {type:"response", id:<req id>, payload:{op:"cancel", jobId, found}}
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

import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { format } from 'node:util';

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
    if (type === 'result' || type === 'progress' || type === 'log') {
      process.send(
        envelope('error', id, {
          message: `${type} is not JSON-serializable: ${err && err.message ? err.message : String(err)}`,
          name: 'TypeError',
          aborted: false,
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
      send('log', current.id, { level, message: format(...parts) });
    } else {
      process.stderr.write(format(...parts) + '\n');
    }
  };
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

async function runJob(ns, id, payload) {
  if (current) {
    send('error', id, { message: `worker busy with job ${current.id}`, name: 'BusyError', aborted: false });
    return;
  }
  const controller = new AbortController();
  const job = { id, controller, settled: false };
  current = job;
  const workflow = typeof payload.workflow === 'string' ? payload.workflow : '';
  const ctx = Object.freeze({
    jobId: id,
    workflow,
    signal: controller.signal,
    progress(cur, total, message) {
      if (job.settled) return;
      send('progress', id, { current: Number(cur) || 0, total: Number(total) || 0, message: message == null ? '' : String(message) });
    },
    log(level, message) {
      if (job.settled) return;
      send('log', id, { level: String(level || 'info'), message: message == null ? '' : String(message) });
    },
  });
  let settledAs;
  try {
    const handler = findHandler(ns, workflow);
    if (!handler) throw new TypeError(`no handler for workflow "${workflow}": export a function named ${camelCase(workflow)} or a default function`);
    const value = await handler(payload.params ?? {}, ctx);
    settledAs = ['result', value === undefined ? null : value];
  } catch (err) {
    settledAs = ['error', errorPayload(err, controller.signal.aborted)];
  }
  job.settled = true;
  current = null;
  jobsServed += 1;
  send(settledAs[0], id, settledAs[1]);
}

function handleRequest(ns, msg) {
  const payload = msg.payload ?? {};
  switch (payload.op) {
    case 'run':
      void runJob(ns, msg.id, payload);
      return;
    case 'cancel': {
      const found = current !== null && !current.settled && (payload.jobId == null || payload.jobId === current.id);
      if (found) current.controller.abort(abortReason(payload.reason));
      send('response', msg.id, { op: 'cancel', jobId: payload.jobId ?? null, found });
      return;
    }
    case 'ping': {
      const mem = process.memoryUsage();
      send('response', msg.id, {
        op: 'pong',
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

async function main() {
  if (!modulePath) {
    send('error', 'ready', { op: 'fatal', message: 'usage: worker-host.mjs <module path> [--dev]' });
    process.exitCode = EXIT_FATAL;
    process.disconnect();
    return;
  }
  let ns;
  try {
    ns = await loadModule(modulePath);
  } catch (err) {
    const p = { op: 'fatal', message: `cannot load ${modulePath}: ${err && err.message ? err.message : String(err)}` };
    if (dev && err && err.stack) p.stack = err.stack;
    process.send(envelope('error', 'ready', p), () => process.exit(EXIT_FATAL));
    return;
  }
  const exports = exportedFunctions(ns);
  if (exports.length === 0) {
    process.send(
      envelope('error', 'ready', { op: 'fatal', message: `${modulePath} exports no handler function (expected a default export or one named per workflow)` }),
      () => process.exit(EXIT_FATAL),
    );
    return;
  }
  process.on('message', (msg) => {
    if (msg && msg.type === 'request' && msg.payload && typeof msg.payload === 'object') handleRequest(ns, msg);
  });
  // The parent closed the channel: end now, whatever a handler still holds open.
  process.on('disconnect', () => {
    if (current) current.controller.abort(abortReason('shutdown'));
    process.exit(0);
  });
  send('response', 'ready', { op: 'ready', pid: process.pid, exports, node: process.version });
}

// Crashes inside a handler's stray callbacks: tell tsbridge which job, then die
// (tsbridge fails that job and replaces this worker).
process.on('uncaughtException', (err) => {
  const message = err && err.message ? err.message : String(err);
  process.stderr.write(`tsbridge worker host: uncaught exception: ${dev && err && err.stack ? err.stack : message}\n`);
  if (current && process.connected) {
    send('log', current.id, { level: 'error', message: `uncaught exception: ${message}` });
  }
  process.exit(70);
});

await main();
