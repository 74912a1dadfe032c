// An unmodified Node program: it only uses process.send and
// process.on('message'), as under child_process.fork. It echoes every
// message and exits by itself when the parent closes the channel.
process.on('message', (m) => process.send(m));
process.send({ hello: 'ready', pid: process.pid });
