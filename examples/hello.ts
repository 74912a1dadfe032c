// The smallest tsbridge job: typed TypeScript, a few protocol lines, a result.
//   tsbridge run -- examples/hello.ts --name world
interface Greeting {
  greeting: string;
  at: string;
}

const args = process.argv.slice(2);
const nameAt = args.indexOf('--name');
const name: string = nameAt >= 0 && args[nameAt + 1] ? args[nameAt + 1] : 'tsbridge';

console.log(`[${new Date().toISOString()}] INFO: saying hello to ${name}`);
for (let i = 1; i <= 3; i++) {
  console.log(`PROGRESS: ${i}/3 - step ${i}`);
}
const result: Greeting = { greeting: `hello, ${name}`, at: new Date().toISOString() };
console.log(`RESULT: ${JSON.stringify(result)}`);
