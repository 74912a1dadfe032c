// An unmodified fork-style program: answers every message with an echo,
// exactly as it would under child_process.fork. Ends when the parent
// disconnects or sends {op: "bye"}.
process.on('message', (m) => {
  if (m && m.op === 'bye') {
    process.send({ op: 'bye-ack' }, () => process.disconnect());
    return;
  }
  process.send({ op: 'echo', got: m, pid: process.pid, runner: 'js' });
});
process.send({ op: 'hello', pid: process.pid });
