// Shared helpers for the tests: run the CLI, read its result, inspect outputs.
import { SpawnSyncReturns, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const APP = path.resolve(__dirname, '..');

/** `node --import tsx main.ts --workflow W --params JSON --output-format json`, from APP. */
export function cliArgs(workflow: string, params: object): string[] {
  return ['--import', 'tsx', 'main.ts', '--workflow', workflow, '--params', JSON.stringify(params), '--output-format', 'json'];
}

export function runCli(workflow: string, params: object): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, cliArgs(workflow, params), { cwd: APP, encoding: 'utf8', timeout: 60_000 });
}

/** The JSON between RESULT_START and RESULT_END. */
export function resultOf(stdout: string): any {
  const match = /^RESULT_START\n([\s\S]*?)\nRESULT_END$/m.exec(stdout);
  if (!match) throw new Error(`no result block in:\n${stdout}`);
  return JSON.parse(match[1]);
}

/** [current, total] of every PROGRESS line. */
export function progressOf(stdout: string): Array<[number, number]> {
  return [...stdout.matchAll(/^PROGRESS: (\d+)\/(\d+) - .+$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
}

export function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'omega-test-'));
}

/** Number of images in a GIF, by walking its block structure. */
export function countGifFrames(gif: Buffer): number {
  const tableSize = (flags: number) => (flags & 0x80 ? 3 * 2 ** ((flags & 7) + 1) : 0);
  const skipSubBlocks = (at: number) => {
    while (gif[at] !== 0) at += gif[at] + 1;
    return at + 1;
  };
  let at = 13 + tableSize(gif[10]); // header (6) + logical screen descriptor (7) + global table
  let frames = 0;
  for (;;) {
    const block = gif[at];
    if (block === 0x3b) return frames; // trailer
    if (block === 0x21) {
      at = skipSubBlocks(at + 2); // extension: introducer, label, sub-blocks
    } else if (block === 0x2c) {
      frames++;
      at += 10 + tableSize(gif[at + 9]); // image descriptor + local table
      at = skipSubBlocks(at + 1); // LZW minimum code size, then data sub-blocks
    } else {
      throw new Error(`bad GIF block 0x${block?.toString(16)} at ${at}`);
    }
  }
}
