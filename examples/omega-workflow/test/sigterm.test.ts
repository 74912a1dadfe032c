// SIGTERM, as tsbridge sends it on cancel or timeout: the CLI stops, removes
// its partial output, logs a WARN line and exits 143 (128 + 15).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { APP, cliArgs, tempDir } from './helpers';

const out = tempDir();
after(() => fs.rmSync(out, { recursive: true, force: true }));

/** Starts a slow job, sends SIGTERM after its first PROGRESS line, returns how it ended. */
function terminateAfterFirstProgress(workflow: string, params: object) {
  return new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; ms: number }>((resolve, reject) => {
    const child = spawn(process.execPath, cliArgs(workflow, params), { cwd: APP });
    let stdout = '';
    let sentAt = 0;
    const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      if (!sentAt && /^PROGRESS: /m.test(stdout)) {
        sentAt = Date.now();
        child.kill('SIGTERM');
      }
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout, ms: Date.now() - sentAt });
    });
  });
}

test('video-generation: SIGTERM mid-job exits 143 with no output left behind', async () => {
  const outputPath = path.join(out, 'movie.gif');
  const end = await terminateAfterFirstProgress('video-generation', { framesDir: 'data/frames', outputPath, delayMs: 500 });
  assert.equal(end.code, 143, end.stdout);
  assert.equal(end.signal, null);
  assert.match(end.stdout, /^\[.+\] WARN: stopped by SIGTERM; partial output removed$/m);
  assert.doesNotMatch(end.stdout, /RESULT_START/);
  assert.ok(end.ms < 2000, `stopped promptly (${end.ms} ms)`);
  assert.deepEqual(fs.readdirSync(out), [], 'no output and no .partial file');
});

test('data-analysis: SIGTERM before the output is written leaves nothing', async () => {
  const outputPath = path.join(out, 'stats.json');
  const end = await terminateAfterFirstProgress('data-analysis', { inputPath: 'data/sample.csv', outputPath, delayMs: 300 });
  assert.equal(end.code, 143, end.stdout);
  assert.equal(fs.existsSync(outputPath), false);
  assert.deepEqual(fs.readdirSync(out), []);
});
