// The same fork-style program in TypeScript (types must be stripped).
type Envelope = { id?: string; type: string; payload?: Record<string, unknown>; timestamp?: number };
const runner: string = 'ts';
const send = (e: Envelope, cb?: () => void): void => {
  process.send!({ ...e, timestamp: Date.now() }, undefined, {}, cb);
};
send({ type: 'log', payload: { level: 'info', message: `hello from ${runner}` } });
process.on('message', (m: Envelope) => {
  if (!m || m.type !== 'request') return;
  if (m.payload && m.payload.op === 'bye') {
    send({ type: 'result', payload: { done: true, runner } });
    send({ id: m.id, type: 'response', payload: { bye: true } }, () => process.disconnect());
    return;
  }
  send({ id: m.id, type: 'progress', payload: { current: 1, total: 2, message: 'echoing' } });
  send({ id: m.id, type: 'response', payload: { echo: m.payload, pid: process.pid, runner } });
});
