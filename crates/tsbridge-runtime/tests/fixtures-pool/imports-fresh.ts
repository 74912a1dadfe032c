// A TypeScript pool module that imports a TypeScript module written for
// each job (params.dir): every job needs tsx to transpile anew, through the
// esbuild service tsx started while this module loaded.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

let n = 0;

export default async function handler(params: { dir: string }): Promise<{ v: number; pid: number }> {
  n += 1;
  const file = join(params.dir, `fresh-${process.pid}-${n}.ts`);
  writeFileSync(file, `export const v: number = ${n};\n`);
  const m: { v: number } = await import(file);
  return { v: m.v, pid: process.pid };
}
