// The raw limit for the pool bench: answers a pool-shaped run request with a
// result envelope, with nothing in between (no handler lookup, no ctx).
process.on('message', (m) => {
  process.send({ id: m.id, type: 'result', payload: m.payload && m.payload.params, timestamp: Date.now() });
});
process.send({ id: 'ready', type: 'response', payload: { op: 'ready' }, timestamp: Date.now() });
