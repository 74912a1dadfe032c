// Sends envelopes that become events, plus a Node-internal message and a
// raw malformed line, then disconnects.
const fs = require('fs');
const send = (m) => new Promise((resolve, reject) => process.send(m, (e) => (e ? reject(e) : resolve())));

(async () => {
  await send({ cmd: 'NODE_TSBRIDGE_TEST', secret: 'internal' });
  await send({ type: 'progress', payload: { current: 1, total: 4, message: 'quarter' }, timestamp: Date.now() });
  // Written around libuv (nothing else is queued now): not JSON.
  fs.writeSync(process.channel.fd, 'this is { not json\n');
  await send({ type: 'log', payload: { level: 'warn', message: 'careful ünïcode' } });
  await send({ type: 'result', payload: { answer: 42, text: 'fin ✓' } });
  await send({ plain: 'message' });
  process.disconnect();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
