// Spawn-mode twin of trivial.ts for the bench: one job per process, the
// params from argv (--params <json>), the result on stdout.
const i = process.argv.indexOf('--params');
const params: Record<string, unknown> = i >= 0 ? JSON.parse(process.argv[i + 1]) : {};
process.stdout.write(`RESULT: ${JSON.stringify(params)}\n`);
