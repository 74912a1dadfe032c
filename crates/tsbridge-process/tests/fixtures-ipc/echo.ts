// The TypeScript twin of echo.js (run by tsx or ts-node).
type Message = { [key: string]: unknown } | string | number | null;

process.on('message', (m: Message) => {
  process.send!(m);
});
const ready: Message = { hello: 'ready', pid: process.pid };
process.send!(ready);
