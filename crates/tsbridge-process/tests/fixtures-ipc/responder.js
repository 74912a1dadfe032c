// Answers tsbridge request envelopes {id, type: "request", payload}.
// payload.value      -> response {echo: value}
// payload.fail       -> error envelope {message: fail}
// payload.ignore     -> never answered
// payload.hold       -> held until a request with payload.release arrives;
//                       then every held request is answered, last held first
//                       (out-of-order answers), then the releasing one.
const held = [];
function answer(m) {
  const p = m.payload || {};
  if (p.fail) {
    process.send({ id: m.id, type: 'error', payload: { message: p.fail }, timestamp: Date.now() });
  } else {
    process.send({ id: m.id, type: 'response', payload: { echo: p.value }, timestamp: Date.now() });
  }
}
process.on('message', (m) => {
  if (!m || m.type !== 'request') return;
  const p = m.payload || {};
  if (p.ignore) return;
  if (p.hold) { held.push(m); return; }
  if (p.release) {
    while (held.length) answer(held.pop());
  }
  answer(m);
});
process.send({ type: 'log', payload: { level: 'info', message: 'responder ready' }, timestamp: Date.now() });
