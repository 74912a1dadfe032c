// An unmodified fork-style program (no tsbridge library): it talks through
// process.send / process.on('message') exactly as under child_process.fork,
// using the SPEC §2.3 envelope. It logs once, then answers each request
// with a progress message and a response echoing the payload; {op:"bye"}
// makes it answer, set a result and disconnect (so it exits 0).
const runner = 'js';
process.send({ type: 'log', payload: { level: 'info', message: `hello from ${runner}` }, timestamp: Date.now() });
process.on('message', (m) => {
  if (!m || m.type !== 'request') return;
  if (m.payload && m.payload.op === 'bye') {
    process.send({ type: 'result', payload: { done: true, runner }, timestamp: Date.now() });
    process.send({ id: m.id, type: 'response', payload: { bye: true }, timestamp: Date.now() }, () => process.disconnect());
    return;
  }
  process.send({ id: m.id, type: 'progress', payload: { current: 1, total: 2, message: 'echoing' }, timestamp: Date.now() });
  process.send({ id: m.id, type: 'response', payload: { echo: m.payload, pid: process.pid, runner }, timestamp: Date.now() });
});
