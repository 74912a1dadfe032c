// The pool-mode handlers (handlers.ts), called the way tsbridge's worker host
// calls them: handler(params, ctx) with ctx = { progress, log, signal, workflow? }.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { PNG } from 'pngjs';
import omegaHandler, { dataAnalysis, imageProcessing, videoGeneration } from '../handlers';
import { countGifFrames, tempDir } from './helpers';

const out = tempDir();
after(() => fs.rmSync(out, { recursive: true, force: true }));

function fakeCtx(workflow?: string) {
  const controller = new AbortController();
  const progress: Array<[number, number, string]> = [];
  const logs: Array<[string, string]> = [];
  return {
    controller,
    progress,
    logs,
    ctx: {
      workflow,
      signal: controller.signal,
      progress: (current: number, total: number, message: string) => void progress.push([current, total, message]),
      log: (level: string, message: string) => void logs.push([level, message]),
    },
  };
}

test('dataAnalysis reports progress through ctx and returns the stats', async () => {
  const { ctx, progress, logs } = fakeCtx();
  const result = await dataAnalysis({ inputPath: 'data/sample.csv' }, ctx);
  assert.equal(result.rows, 200);
  assert.equal(result.columns.id.mean, 100.5);
  assert.ok(progress.length >= 3);
  const [cur, total] = progress[progress.length - 1];
  assert.equal(cur, total);
  assert.ok(logs.some(([level]) => level === 'info'));
});

test('imageProcessing writes the thumbnail', async () => {
  const { ctx } = fakeCtx();
  const outputPath = path.join(out, 'thumb.png');
  const result = await imageProcessing({ inputPath: 'data/sample.png', outputPath, width: 32 }, ctx);
  assert.deepEqual([result.width, result.height], [32, 24]);
  const png = PNG.sync.read(fs.readFileSync(outputPath));
  assert.deepEqual([png.width, png.height], [32, 24]);
});

test('videoGeneration encodes synthetic frames', async () => {
  const { ctx, progress } = fakeCtx();
  const outputPath = path.join(out, 'synthetic.gif');
  const result = await videoGeneration({ frames: 4, outputPath }, ctx);
  assert.equal(result.frames, 4);
  assert.equal(countGifFrames(fs.readFileSync(outputPath)), 4);
  assert.equal(progress.length, 5);
});

test('the default export dispatches on ctx.workflow (e.g. data-analysis-pooled) or params.workflow', async () => {
  const pooled = fakeCtx('data-analysis-pooled');
  const a = (await omegaHandler({ inputPath: 'data/sample.csv', columns: ['wind_kmh'] }, pooled.ctx)) as any;
  assert.deepEqual(Object.keys(a.columns), ['wind_kmh']);
  const b = (await omegaHandler({ workflow: 'dataAnalysis', inputPath: 'data/sample.csv' }, fakeCtx().ctx)) as any;
  assert.equal(b.rows, 200);
  await assert.rejects(omegaHandler({ inputPath: 'x' }, fakeCtx().ctx), /no workflow named/);
  await assert.rejects(omegaHandler({}, fakeCtx('make-coffee').ctx), /unknown workflow "make-coffee"/);
});

test('an aborted signal stops the job with an AbortError and leaves no output', async () => {
  const { ctx, controller, progress } = fakeCtx('video-generation');
  const outputPath = path.join(out, 'aborted.gif');
  ctx.progress = (current, total, message) => {
    progress.push([current, total, message]);
    if (current === 2) controller.abort('cancelled by test');
  };
  await assert.rejects(omegaHandler({ framesDir: 'data/frames', outputPath, delayMs: 20 }, ctx), (err: Error) => {
    assert.equal(err.name, 'AbortError');
    assert.match(err.message, /cancelled by test/);
    return true;
  });
  assert.equal(progress.length, 2, 'no step ran after the abort');
  assert.equal(fs.existsSync(outputPath), false);
  assert.deepEqual(fs.readdirSync(out).filter((f) => f.includes('aborted')), []);
});

test('a bad parameter is a plain error naming it', async () => {
  await assert.rejects(imageProcessing({ inputPath: 'data/sample.png' }, fakeCtx().ctx), /params\.outputPath is required/);
  await assert.rejects(dataAnalysis({ inputPath: 'data/nope.csv' }, fakeCtx().ctx), /input CSV not found: data\/nope\.csv/);
});
