// The same fork-style echo program in TypeScript (types must be stripped).
type Msg = { op?: string; [k: string]: unknown };
process.on('message', (m: Msg) => {
  if (m && m.op === 'bye') {
    process.send!({ op: 'bye-ack' }, () => process.disconnect());
    return;
  }
  const reply: Msg = { op: 'echo', got: m, pid: process.pid, runner: 'ts' };
  process.send!(reply);
});
process.send!({ op: 'hello', pid: process.pid });
