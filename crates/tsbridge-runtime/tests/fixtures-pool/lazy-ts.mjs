// A plain ES module handler (nothing for tsx to transpile while the worker
// loads) that imports TypeScript lazily: every job writes three fresh
// modules into params.dir and imports them, a .ts (CommonJS here: no
// package.json says otherwise), a .cts and a .mts. tsx transpiles each
// through an esbuild service of its own, which the worker host started
// while it loaded; started by a job, the per-job sweep would kill it.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

let n = 0;

export default async function handler(params) {
  n += 1;
  const values = [];
  for (const ext of ['ts', 'cts', 'mts']) {
    const file = join(params.dir, `lazy-${process.pid}-${n}.${ext}`);
    writeFileSync(file, `export const v: number = ${n};\n`);
    const m = await import(pathToFileURL(file).href);
    // A CommonJS module's exports are its default export under import().
    values.push(m.v ?? m.default.v);
  }
  return { values, pid: process.pid };
}
