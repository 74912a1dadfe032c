// Black-box tests of js/worker-host.mjs: each test forks the host exactly as
// tsbridge starts it (an IPC channel, the module path as argument) and talks
// the envelope protocol to it. Run: node --test js/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const host = path.join(here, '..', 'worker-host.mjs');
const fx = (name) => path.join(here, 'fixtures', name);
const repo = path.join(here, '..', '..');
const TIMEOUT = 30_000;

/** Starts a host; resolves after its first message (ready or fatal). */
async function start(module, { execArgv = [], args = [] } = {}) {
  const child = fork(host, [module, ...args], { execArgv, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (out.stdout += d));
  child.stderr.on('data', (d) => (out.stderr += d));
  const inbox = [];
  const waiters = [];
  child.on('message', (m) => {
    inbox.push(m);
    for (const w of waiters.splice(0)) w();
  });
  const exited = once(child, 'exit');
  async function next(pred) {
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0];
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`host exited; stderr: ${out.stderr}`);
      if (Date.now() > deadline) throw new Error('timed out waiting for a message');
      await new Promise((r) => { waiters.push(r); setTimeout(r, 100); });
    }
  }
  // The first ping's answer means "loaded"; a load failure is a fatal log.
  child.send({ id: 'boot', type: 'request', payload: { op: 'ping' }, timestamp: Date.now() });
  const first = await next((m) => m.id === 'boot' || m.id === 'fatal');
  let seq = 0;
  return {
    child, out, first, inbox, next, exited,
    /** Runs one job; returns {end, events} where end is the result/error envelope. */
    async run(params, workflow = 'wf') {
      const id = `job-${++seq}`;
      child.send({ id, type: 'request', payload: { op: 'run', jobId: `J${id}`, workflow, params, barrier: `B${id}` }, timestamp: Date.now() });
      const end = await next((m) => m.id === id && (m.type === 'response' || m.type === 'error'));
      const events = [];
      for (let i = inbox.length - 1; i >= 0; i--) if (inbox[i].id === id) events.unshift(inbox.splice(i, 1)[0]);
      // The answer counts the job's progress/log envelopes (tsbridge forwards
      // that many before it reports the answer); no end marker follows them.
      assert.equal(typeof end.payload.events, 'number', JSON.stringify(end));
      assert.ok(events.every((e) => e.type === 'progress' || e.type === 'log'), JSON.stringify(events));
      assert.equal(events.length, end.payload.events);
      if (end.type === 'response') end.payload = end.payload.value;
      else delete end.payload.events;
      return { id, end, events };
    },
    async request(payload) {
      const id = `req-${++seq}`;
      child.send({ id, type: 'request', payload, timestamp: Date.now() });
      return next((m) => m.id === id);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        if (child.connected) child.disconnect();
        const t = setTimeout(() => child.kill('SIGKILL'), TIMEOUT);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

test('the first pong says ready and names the exports and the pid', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    assert.equal(h.first.type, 'response');
    assert.equal(h.first.payload.op, 'pong');
    assert.equal(h.first.payload.ready, true);
    assert.equal(h.first.payload.pid, h.child.pid);
    assert.ok(h.first.payload.exports.includes('default'));
    assert.ok(h.first.payload.exports.includes('dataAnalysis'));
    assert.equal(typeof h.first.timestamp, 'number');
  } finally {
    await h.stop();
  }
});

test('serves many jobs on one process, params and ctx round-trip', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    for (let i = 0; i < 50; i++) {
      const { id, end } = await h.run({ mode: 'echo', i, s: 'é ✓' }, 'plain');
      assert.equal(end.type, 'response');
      assert.deepEqual(end.payload.params, { mode: 'echo', i, s: 'é ✓' });
      assert.equal(end.payload.workflow, 'plain');
      assert.equal(end.payload.jobId, `J${id}`);
      assert.equal(end.payload.pid, h.child.pid);
    }
  } finally {
    await h.stop();
  }
});

test('progress and log are tagged with the job id and arrive before the result', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    const { id, end, events } = await h.run({ mode: 'progress' });
    assert.equal(end.payload, 'ok');
    assert.deepEqual(events.map((e) => [e.id, e.type]), [[id, 'progress'], [id, 'log'], [id, 'progress']]);
    assert.deepEqual(events[0].payload, { current: 1, total: 4, message: 'one' });
    assert.deepEqual(events[1].payload, { level: 'warn', message: 'careful' });
  } finally {
    await h.stop();
  }
});

test('console output inside a job becomes log envelopes, never stdout', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    const { end, events } = await h.run({ mode: 'console' });
    assert.equal(end.payload, 'clean');
    assert.deepEqual(events.map((e) => e.payload), [
      { level: 'info', message: 'RESULT: {"forged":true}' },
      { level: 'error', message: 'to stderr? 42' },
    ]);
    await h.stop();
    assert.equal(h.out.stdout, '');
  } finally {
    await h.stop();
  }
});

test('named export by camelCase, then exact name, then default', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    assert.deepEqual((await h.run({}, 'data-analysis')).end.payload, { via: 'dataAnalysis', workflow: 'data-analysis' });
    assert.deepEqual((await h.run({}, 'weird.name!')).end.payload, { via: 'exact' });
    assert.equal((await h.run({ mode: 'echo' }, 'other-thing')).end.payload.workflow, 'other-thing');
  } finally {
    await h.stop();
  }
});

test('TypeScript compiled to CommonJS: default found as mod.default.default', async () => {
  const h = await start(fx('ts-cjs-interop.cjs'));
  try {
    assert.deepEqual((await h.run({}, 'anything')).end.payload, { via: 'default', workflow: 'anything' });
    assert.deepEqual((await h.run({}, 'image-processing')).end.payload, { via: 'imageProcessing' });
  } finally {
    await h.stop();
  }
});

test('module.exports = fn is the default handler', async () => {
  const h = await start(fx('cjs-function.cjs'));
  try {
    assert.deepEqual((await h.run({ a: 1 })).end.payload, { via: 'module.exports', params: { a: 1 } });
  } finally {
    await h.stop();
  }
});

test('a throw or a rejection fails only that job; no stack outside dev mode', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    const t = (await h.run({ mode: 'throw' })).end;
    assert.equal(t.type, 'error');
    assert.deepEqual(t.payload, { message: 'bad range', name: 'RangeError', aborted: false });
    const r = (await h.run({ mode: 'reject' })).end;
    assert.equal(r.payload.message, 'plain string');
    assert.equal((await h.run({ mode: 'echo' })).end.payload.pid, h.child.pid);
  } finally {
    await h.stop();
  }
});

test('handlers that are not async: a plain value, a sync throw, a thenable', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    const v = await h.run({ n: 7 }, 'sync-value');
    assert.equal(v.end.type, 'response');
    assert.deepEqual(v.end.payload, { sync: true, n: 7 });
    // What the handler queued before returning still belongs to its job.
    assert.deepEqual(v.events.map((e) => [e.type, e.payload.message]), [['progress', 'sync'], ['log', 'queued before the return']]);
    const t = await h.run({}, 'sync-throw');
    assert.equal(t.end.type, 'error');
    assert.deepEqual(t.end.payload, { message: 'sync failure', name: 'TypeError', aborted: false });
    const ok = await h.run({}, 'thenable');
    assert.deepEqual(ok.end.payload, { via: 'thenable' });
    assert.equal(ok.events.length, 1);
    const bad = await h.run({ fail: true }, 'thenable');
    assert.equal(bad.end.type, 'error');
    assert.equal(bad.end.payload.message, 'thenable failed');
    // Settled once: no second answer for either, and the worker goes on.
    assert.equal((await h.run({ mode: 'echo' })).end.payload.pid, h.child.pid);
    assert.ok(!h.inbox.some((m) => m.type === 'response' || m.type === 'error'), JSON.stringify(h.inbox));
  } finally {
    await h.stop();
  }
});

test('dev mode includes the stack', async () => {
  const h = await start(fx('handlers.mjs'), { args: ['--dev'] });
  try {
    const t = (await h.run({ mode: 'throw' })).end;
    assert.match(t.payload.stack, /RangeError: bad range\n\s+at handler/);
  } finally {
    await h.stop();
  }
});

test('undefined becomes null; a non-serializable result is an error, worker survives', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    const u = (await h.run({ mode: 'undefined' })).end;
    assert.equal(u.type, 'response');
    assert.equal(u.payload, null);
    const b = (await h.run({ mode: 'bigint' })).end;
    assert.equal(b.type, 'error');
    assert.match(b.payload.message, /not JSON-serializable.*BigInt/);
    assert.equal((await h.run({ mode: 'echo' })).end.type, 'response');
  } finally {
    await h.stop();
  }
});

test('cancel aborts the job signal with the reason; the worker serves the next job', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    h.child.send({ id: 'j1', type: 'request', payload: { op: 'run', jobId: 'job-one', workflow: 'w', params: { mode: 'wait-abort' } } });
    const ack = await h.request({ op: 'cancel', jobId: 'job-one', reason: 'timeout' });
    assert.deepEqual(ack.payload, { op: 'cancel', jobId: 'job-one', found: true });
    const end = await h.next((m) => m.id === 'j1' && m.type === 'error');
    assert.deepEqual(end.payload, { message: 'job timed out', name: 'TimeoutError', aborted: true, events: 0 });
    const miss = await h.request({ op: 'cancel', jobId: 'nope' });
    assert.equal(miss.payload.found, false);
    assert.equal((await h.run({ mode: 'echo' })).end.type, 'response');
  } finally {
    await h.stop();
  }
});

test('ctx is frozen (its prototype too) and has jobId, workflow, progress, log and a lazy signal', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    for (let i = 0; i < 2; i++) {
      const { id, end } = await h.run({ mode: 'ctx-shape' }, 'shape');
      assert.deepEqual(end.payload, {
        frozen: true,
        protoFrozen: true,
        refused: ['add', 'replace', 'signal', 'proto'],
        keys: ['jobId', 'log', 'progress', 'workflow'],
        jobId: `J${id}`,
        workflow: 'shape',
        signal: true,
        progress: 'function',
      });
    }
  } finally {
    await h.stop();
  }
});

test('ctx methods work detached and count as the job\'s events', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    const { id, end, events } = await h.run({ mode: 'detached' });
    assert.equal(end.payload, 'ok');
    assert.deepEqual(events.map((e) => [e.id, e.type]), [[id, 'progress'], [id, 'log']]);
  } finally {
    await h.stop();
  }
});

test('a signal first read after the cancel is already aborted with the reason', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    h.child.send({ id: 'j1', type: 'request', payload: { op: 'run', jobId: 'job-one', workflow: 'w', params: { mode: 'read-signal-late' } } });
    const ack = await h.request({ op: 'cancel', jobId: 'job-one', reason: 'cancelled' });
    assert.equal(ack.payload.found, true);
    const end = await h.next((m) => m.id === 'j1' && m.type === 'response');
    assert.deepEqual(end.payload, { value: { aborted: true, reason: 'AbortError', same: true }, events: 0 });
    // the next job gets a fresh, unaborted signal
    const next = await h.run({ mode: 'read-signal-late' });
    assert.deepEqual(next.end.payload, { aborted: false, same: true });
  } finally {
    await h.stop();
  }
});

test('ctx calls after the job settled are dropped', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    const first = await h.run({ mode: 'late-progress' });
    assert.equal(first.end.payload, 'first');
    // a later job that outlives the stray timer (50 ms) of the first one
    const second = await h.run({ mode: 'sleep-200' });
    assert.equal(second.end.payload, 'slept');
    assert.equal(h.inbox.filter((m) => m.id === first.id).length, 0);
    assert.equal(second.events.length, 0, JSON.stringify(second.events));
  } finally {
    await h.stop();
  }
});

test('ping reports rss and job count', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    await h.run({ mode: 'echo' });
    const pong = await h.request({ op: 'ping' });
    assert.equal(pong.type, 'response');
    assert.equal(pong.payload.op, 'pong');
    assert.ok(pong.payload.rss > 1_000_000);
    assert.equal(pong.payload.jobs, 1);
    assert.equal(pong.payload.ready, true);
    assert.equal(pong.payload.busy, false);
  } finally {
    await h.stop();
  }
});

test('a second job while busy is refused, the first still completes', async () => {
  const h = await start(fx('handlers.mjs'));
  try {
    h.child.send({ id: 'a', type: 'request', payload: { op: 'run', jobId: 'A', workflow: 'w', params: { mode: 'wait-abort' } } });
    h.child.send({ id: 'b', type: 'request', payload: { op: 'run', workflow: 'w', params: { mode: 'echo' } } });
    const busy = await h.next((m) => m.id === 'b');
    assert.equal(busy.payload.name, 'BusyError');
    await h.request({ op: 'cancel', jobId: 'A' });
    assert.equal((await h.next((m) => m.id === 'a')).payload.name, 'AbortError');
  } finally {
    await h.stop();
  }
});

test('process.exit inside a handler ends the worker with that code', async () => {
  const h = await start(fx('handlers.mjs'));
  h.child.send({ id: 'x', type: 'request', payload: { op: 'run', workflow: 'w', params: { mode: 'exit' } } });
  const [code] = await h.exited;
  assert.equal(code, 3);
});

test('an uncaught exception logs to the job and exits 70', async () => {
  const h = await start(fx('handlers.mjs'));
  h.child.send({ id: 'u', type: 'request', payload: { op: 'run', workflow: 'w', params: { mode: 'uncaught' } } });
  const [code] = await h.exited;
  assert.equal(code, 70);
  assert.ok(h.inbox.some((m) => m.id === 'u' && m.type === 'log' && /boom later/.test(m.payload.message)));
});

test('closing the channel ends an idle or busy worker', async () => {
  const h = await start(fx('handlers.mjs'));
  h.child.send({ id: 'z', type: 'request', payload: { op: 'run', workflow: 'w', params: { mode: 'ignore-abort' } } });
  await h.request({ op: 'ping' });
  h.child.disconnect();
  const [code] = await h.exited;
  assert.equal(code, 0);
});

for (const [name, file, pattern] of [
  ['a module that throws at load', 'broken.mjs', /cannot load .*broken\.mjs: module failed at load/],
  ['a module without a handler', 'no-handler.mjs', /exports no handler function/],
  ['a missing module', 'does-not-exist.mjs', /cannot load/],
]) {
  test(`fatal error and exit 78 for ${name}`, async () => {
    const h = await start(fx(file));
    assert.equal(h.first.type, 'log');
    assert.equal(h.first.payload.fatal, true);
    assert.equal(h.first.payload.level, 'error');
    assert.match(h.first.payload.message, pattern);
    const [code] = await h.exited;
    assert.equal(code, 78);
  });
}

test('without an IPC channel the host refuses to run', async () => {
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, [host, fx('handlers.mjs')], { encoding: 'utf8' });
  assert.equal(r.status, 64);
  assert.match(r.stderr, /no IPC channel/);
});

function findTsx() {
  for (const dir of ['crates/tsbridge-runtime/tests/fixtures-pool', 'examples/omega-workflow']) {
    const p = path.join(repo, dir, 'node_modules', 'tsx', 'dist', 'loader.mjs');
    if (existsSync(p)) return p;
  }
  return null;
}

test('a TypeScript default export through tsx (--import)', async (t) => {
  const tsx = findTsx();
  if (!tsx) return t.skip('tsx not installed (npm ci in crates/tsbridge-runtime/tests/fixtures-pool)');
  const h = await start(fx('handler.ts'), { execArgv: ['--import', tsx] });
  try {
    const { end, events } = await h.run({ name: 'ts' }, 'typed-flow');
    assert.deepEqual(end.payload, { greeting: 'hello ts', workflow: 'typed-flow' });
    assert.equal(events[0].payload.message, 'typed');
  } finally {
    await h.stop();
  }
});

test('the omega example handlers.ts (TS compiled to CJS by tsx) through the default export', async (t) => {
  const tsx = findTsx();
  const handlers = path.join(repo, 'examples', 'omega-workflow', 'handlers.ts');
  if (!tsx || !existsSync(path.join(repo, 'examples', 'omega-workflow', 'node_modules', 'pngjs'))) {
    return t.skip('examples/omega-workflow not installed (npm ci there)');
  }
  const h = await start(handlers, { execArgv: ['--import', tsx] });
  try {
    assert.ok(h.first.payload.exports.includes('default'), JSON.stringify(h.first));
    const { end } = await h.run({ inputPath: path.join(repo, 'examples/omega-workflow/data/sample.csv') }, 'data-analysis-pooled');
    assert.equal(end.type, 'response', JSON.stringify(end));
  } finally {
    await h.stop();
  }
});
