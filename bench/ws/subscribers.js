'use strict';
// Idle WebSocket subscribers against `tsbridge serve`: submit JOBS jobs, open CONNS connections
// to /v1/ws (at most INFLIGHT handshakes at a time), each subscribing to one job (round robin),
// then report the server's RSS growth. Loopback only.
// usage: node subscribers.js --base http://127.0.0.1:8789 --pid SERVER_PID [--conns 10000] [--jobs 1000]
//        [--workflow sleeper] [--hold 15] [--inflight 200]
// Needs the `ws` npm package: NODE_PATH=/tmp/bench-ws-node/node_modules (run.sh installs it).
const fs = require('fs');
const WebSocket = require('ws');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const BASE = arg('base', 'http://127.0.0.1:8789');
const PID = Number(arg('pid', '0'));
const CONNS = Number(arg('conns', '10000'));
const JOBS = Number(arg('jobs', '1000'));
const WORKFLOW = arg('workflow', 'sleeper');
const HOLD_S = Number(arg('hold', '15'));
const INFLIGHT = Number(arg('inflight', '200'));
if (!new URL(BASE).hostname.startsWith('127.')) throw new Error('loopback only');

const mib = (kb) => (kb / 1024).toFixed(1);
function mem() {
  const s = fs.readFileSync(`/proc/${PID}/status`, 'utf8');
  const get = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)[1]);
  const fds = fs.readdirSync(`/proc/${PID}/fd`).length;
  return { rss: get('VmRSS'), hwm: get('VmHWM'), threads: get('Threads'), fds };
}
const show = (label, m) =>
  console.log(`${label}: VmRSS=${mib(m.rss)}MiB VmHWM=${mib(m.hwm)}MiB threads=${m.threads} fds=${m.fds}`);
// Where the memory is: the server's anonymous mappings by size (many equal ones = per-connection mmaps).
function mappings() {
  const sizes = {};
  for (const l of fs.readFileSync(`/proc/${PID}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ 0\s*(\S*)$/.exec(l);
    if (!m || (m[3] && m[3] !== '[heap]')) continue;
    const kib = (parseInt(m[2], 16) - parseInt(m[1], 16)) / 1024;
    const k = m[3] === '[heap]' ? `[heap] ${kib} KiB` : `${kib} KiB`;
    sizes[k] = (sizes[k] || 0) + 1;
  }
  const top = Object.entries(sizes).sort((a, b) => b[1] - a[1]).slice(0, 4);
  const heap = Object.keys(sizes).find((k) => k.startsWith('[heap]')) || '[heap] none';
  return `${heap}; most common anonymous mappings: ${top.map(([k, n]) => `${n}x ${k}`).join(', ')}`;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function submitJobs() {
  const ids = [];
  for (let i = 0; i < JOBS; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(JOBS, i + 50); j++) {
      batch.push(
        fetch(`${BASE}/v1/jobs`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ workflow: WORKFLOW, parameters: { n: j } }),
        }).then(async (r) => {
          const b = await r.json();
          if (r.status !== 202) throw new Error(`submit: ${r.status} ${JSON.stringify(b)}`);
          return b.data.jobId;
        }),
      );
    }
    ids.push(...(await Promise.all(batch)));
  }
  return ids;
}

function subscribe(url, jobId) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    const stats = { ws, messages: 0, types: {} };
    let done = false;
    const timer = setTimeout(() => !done && reject(new Error('subscribe timed out (60 s)')), 60000);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'subscribe', workflowId: jobId })));
    ws.on('message', (data) => {
      stats.messages++;
      let t = '?';
      try { t = JSON.parse(data.toString()).type; } catch (_) {}
      stats.types[t] = (stats.types[t] || 0) + 1;
      // subscribed, then the job's current state: the subscription is in place
      if (!done && t === 'state') { done = true; clearTimeout(timer); resolve(stats); }
      if (t === 'error') { done = true; clearTimeout(timer); reject(new Error(data.toString())); }
    });
    ws.on('error', (e) => { if (!done) { done = true; clearTimeout(timer); reject(e); } });
    ws.on('close', () => { stats.closed = true; });
  });
}

(async () => {
  show('server after startup', mem());
  const t0 = Date.now();
  const ids = await submitJobs();
  console.log(`submitted ${ids.length} jobs in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await sleep(2000);
  const base = mem();
  show('server with jobs, before subscribers (baseline)', base);

  const url = BASE.replace(/^http/, 'ws') + '/v1/ws';
  const subs = new Array(CONNS);
  let next = 0, failed = 0;
  const t1 = Date.now();
  async function lane() {
    while (next < CONNS) {
      const i = next++;
      try { subs[i] = await subscribe(url, ids[i % ids.length]); } catch (e) {
        failed++;
        if (failed <= 5) console.log(`connection ${i} failed: ${e.message}`);
      }
    }
  }
  await Promise.all(Array.from({ length: INFLIGHT }, lane));
  const ok = subs.filter(Boolean).length;
  console.log(`subscribed ${ok}/${CONNS} (failed ${failed}) in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
  await sleep(3000);
  const after = mem();
  show('server with subscribers', after);
  console.log(`server memory layout: ${mappings()}`);
  console.log(`holding ${HOLD_S} s idle`);
  await sleep(HOLD_S * 1000);
  const held = mem();
  show(`server after ${HOLD_S} s idle`, held);
  const alive = subs.filter((s) => s && !s.closed && s.ws.readyState === WebSocket.OPEN).length;
  const growth = held.rss - base.rss;
  console.log(`RESULT conns=${ok} alive=${alive} failed=${failed} rss_growth=${mib(growth)}MiB ` +
    `per_conn=${(growth / Math.max(ok, 1)).toFixed(2)}KiB hwm=${mib(held.hwm)}MiB fds=${held.fds}`);
  for (const s of subs) if (s) s.ws.terminate();
  await sleep(3000);
  show('server after the subscribers left', mem());
  await sleep(7000);
  show('server 10 s after the subscribers left', mem());
  process.exit(ok === CONNS && alive === CONNS ? 0 : 1);
})().catch((e) => { console.error(e); process.exit(2); });
