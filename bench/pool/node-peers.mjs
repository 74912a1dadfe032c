// Drives the Node peers' pools in-process (no HTTP) and prints one JSON line
// per peer: sequential round-trip latency of a trivial job and jobs/s.
//   node bench/pool/node-peers.mjs <node-seed dir (npm ci done)> [jobs=5000] [warmup=500]
// Peers (from /work/shared/peers/node-seed):
//   fork-pool: child_process.fork(pool-worker.js) + process.send JSON IPC,
//              exactly the message shape pool-server.js uses;
//   piscina:   piscina (worker_threads) running piscina-worker.js.
import { fork } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

const seed = path.resolve(process.argv[2] ?? '/tmp/poolbench/node-seed');
const N = Number(process.argv[3] ?? 5000);
const WARM = Number(process.argv[4] ?? 500);
const params = { inputPath: '/in/a.csv', outputPath: '/out/b.json' };

function summary(name, lat, totalNs, extra = {}) {
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.round((lat.length - 1) * p))] / 1000;
  return JSON.stringify({ peer: name, n: lat.length, p50_us: +q(0.5).toFixed(1), p99_us: +q(0.99).toFixed(1), jobs_per_s: Math.round(lat.length / (totalNs / 1e9)), ...extra });
}

async function forkPool() {
  const w = fork(path.join(seed, 'pool-worker.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await new Promise((r) => w.once('message', (m) => m.kind === 'ready' && r()));
  let pending = null;
  w.on('message', (m) => {
    if (m.kind === 'result' && pending && m.id === pending.id) { const p = pending; pending = null; p.resolve(m); }
  });
  const call = (id) => new Promise((resolve) => { pending = { id, resolve }; w.send({ id, type: 'data-analysis', params }); });
  for (let i = 0; i < WARM; i++) await call(i);
  const lat = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    const s = process.hrtime.bigint();
    const m = await call(WARM + i);
    if (!m.ok) throw new Error(m.error);
    lat.push(Number(process.hrtime.bigint() - s));
  }
  const total = Number(process.hrtime.bigint() - t0);
  w.kill();
  return summary('node fork pool (process.send)', lat, total);
}

async function piscina() {
  const require = createRequire(path.join(seed, 'package.json'));
  const Piscina = require('piscina');
  const pool = new Piscina({ filename: path.join(seed, 'piscina-worker.js'), minThreads: 1, maxThreads: 1 });
  for (let i = 0; i < WARM; i++) await pool.run({ type: 'data-analysis', params });
  const lat = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    const s = process.hrtime.bigint();
    await pool.run({ type: 'data-analysis', params });
    lat.push(Number(process.hrtime.bigint() - s));
  }
  const total = Number(process.hrtime.bigint() - t0);
  await pool.destroy();
  return summary('piscina (worker_threads)', lat, total);
}

console.log(await forkPool());
console.log(await piscina());
