// Each workflow through the CLI, on the committed sample data.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { PNG } from 'pngjs';
import { APP, countGifFrames, progressOf, resultOf, runCli, tempDir } from './helpers';

const out = tempDir();
after(() => fs.rmSync(out, { recursive: true, force: true }));

/** Stats computed here without the app's code: plain split, sort, two-pass sums. */
function expectedStats(csvPath: string) {
  const [header, ...lines] = fs.readFileSync(csvPath, 'utf8').trim().split('\n');
  const names = header.split(',');
  const rows = lines.map((line) => line.split(','));
  const stats: Record<string, { count: number; min: number; max: number; mean: number; median: number; stddev: number }> = {};
  names.forEach((name, c) => {
    const cells = rows.map((r) => r[c]).filter((v) => v !== '');
    if (cells.some((v) => Number.isNaN(parseFloat(v)))) return; // text column
    const xs = cells.map(parseFloat).sort((a, b) => a - b);
    const n = xs.length;
    const mean = xs.reduce((a, b) => a + b) / n;
    const sumSq = xs.reduce((a, b) => a + b * b, 0);
    stats[name] = {
      count: n,
      min: xs[0],
      max: xs[n - 1],
      mean,
      median: n % 2 ? xs[(n - 1) / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2,
      stddev: Math.sqrt((sumSq - n * mean * mean) / (n - 1)),
    };
  });
  return { rows: rows.length, stats };
}

function assertProgress(stdout: string): void {
  const progress = progressOf(stdout);
  assert.ok(progress.length >= 3, `several PROGRESS lines, got ${progress.length}`);
  const [last, total] = progress[progress.length - 1];
  assert.equal(last, total, 'last PROGRESS line is n/n');
  progress.forEach(([cur], i) => i > 0 && assert.ok(cur > progress[i - 1][0], 'PROGRESS increases'));
  assert.match(stdout, /^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] INFO: .+$/m, 'has an INFO log line');
}

describe('data-analysis', () => {
  test('computes per-column stats of data/sample.csv and writes them', () => {
    const outputPath = path.join(out, 'stats.json');
    const run = runCli('data-analysis', { inputPath: 'data/sample.csv', outputPath });
    assert.equal(run.status, 0, run.stderr);
    assertProgress(run.stdout);
    const result = resultOf(run.stdout);
    const expected = expectedStats(path.join(APP, 'data/sample.csv'));
    assert.equal(result.rows, 200);
    assert.equal(result.rows, expected.rows);
    assert.deepEqual(result.textColumns, ['city']);
    assert.deepEqual(Object.keys(result.columns), Object.keys(expected.stats));
    for (const [name, want] of Object.entries(expected.stats)) {
      const got = result.columns[name];
      for (const key of Object.keys(want) as Array<keyof typeof want>) {
        assert.ok(Math.abs(got[key] - want[key]) < 1e-9, `${name}.${key}: ${got[key]} vs ${want[key]}`);
      }
    }
    assert.ok(result.columns.rainfall_mm.count < 200, 'empty cells are not counted');
    assert.deepEqual(JSON.parse(fs.readFileSync(outputPath, 'utf8')), result);
  });

  test('columns limits the analysis', () => {
    const run = runCli('data-analysis', { inputPath: 'data/sample.csv', columns: ['humidity_pct'] });
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(Object.keys(resultOf(run.stdout).columns), ['humidity_pct']);
  });

  test('a missing file is a clear error, exit 1', () => {
    const run = runCli('data-analysis', { inputPath: 'data/no-such.csv' });
    assert.equal(run.status, 1);
    assert.match(run.stderr, /^\[.+\] ERROR: input CSV not found: data\/no-such\.csv$/m);
    assert.doesNotMatch(run.stdout, /RESULT_START/);
  });
});

describe('image-processing', () => {
  test('makes a grayscale thumbnail that keeps the aspect ratio', () => {
    const outputPath = path.join(out, 'thumb.png');
    const run = runCli('image-processing', { inputPath: 'data/sample.png', outputPath });
    assert.equal(run.status, 0, run.stderr);
    assertProgress(run.stdout);
    const result = resultOf(run.stdout);
    const thumb = PNG.sync.read(fs.readFileSync(outputPath));
    const source = PNG.sync.read(fs.readFileSync(path.join(APP, 'data/sample.png')));
    assert.deepEqual([source.width, source.height], [256, 192]);
    assert.deepEqual([thumb.width, thumb.height], [64, 48]);
    assert.deepEqual(result, {
      width: 64, height: 48, sourceWidth: 256, sourceHeight: 192, outputPath, bytes: fs.statSync(outputPath).size,
    });
    // gray: pngjs decodes to RGBA, all three channels equal
    let meanThumb = 0;
    for (let p = 0; p < thumb.width * thumb.height; p++) {
      const [r, g, b] = thumb.data.subarray(4 * p, 4 * p + 3);
      assert.ok(r === g && g === b, 'pixel is gray');
      meanThumb += r / (thumb.width * thumb.height);
    }
    // a 4x4 box filter keeps the mean luma of the source (within rounding)
    let meanSource = 0;
    for (let p = 0; p < source.width * source.height; p++) {
      const [r, g, b] = source.data.subarray(4 * p, 4 * p + 3);
      meanSource += (0.299 * r + 0.587 * g + 0.114 * b) / (source.width * source.height);
    }
    assert.ok(Math.abs(meanThumb - meanSource) < 1, `mean luma ${meanThumb} vs ${meanSource}`);
  });

  test('width is honoured, and relative output paths land under the app root', () => {
    const rel = `data/out/test-thumb-${process.pid}.png`;
    try {
      const run = runCli('image-processing', { inputPath: 'data/sample.png', outputPath: rel, width: 100 });
      assert.equal(run.status, 0, run.stderr);
      const thumb = PNG.sync.read(fs.readFileSync(path.join(APP, rel)));
      assert.deepEqual([thumb.width, thumb.height], [100, 75]);
    } finally {
      fs.rmSync(path.join(APP, rel), { force: true });
    }
  });
});

describe('video-generation', () => {
  test('encodes data/frames into an animated GIF', () => {
    const outputPath = path.join(out, 'movie.gif');
    const run = runCli('video-generation', { framesDir: 'data/frames', outputPath, fps: 5 });
    assert.equal(run.status, 0, run.stderr);
    assertProgress(run.stdout);
    const gif = fs.readFileSync(outputPath);
    assert.equal(gif.subarray(0, 6).toString('latin1'), 'GIF89a');
    assert.deepEqual([gif.readUInt16LE(6), gif.readUInt16LE(8)], [64, 48]);
    assert.equal(countGifFrames(gif), 8);
    assert.deepEqual(resultOf(run.stdout), {
      frames: 8, width: 64, height: 48, fps: 5, durationMs: 1600, outputPath, bytes: gif.length,
    });
  });

  test('draws N synthetic frames when params.frames is a number', () => {
    const outputPath = path.join(out, 'synthetic.gif');
    const run = runCli('video-generation', { frames: 5, width: 40, height: 30, outputPath });
    assert.equal(run.status, 0, run.stderr);
    const gif = fs.readFileSync(outputPath);
    assert.equal(gif.subarray(0, 6).toString('latin1'), 'GIF89a');
    assert.deepEqual([gif.readUInt16LE(6), gif.readUInt16LE(8)], [40, 30]);
    assert.equal(countGifFrames(gif), 5);
  });
});

describe('CLI', () => {
  test('bad --params JSON and unknown workflows exit 1 with an ERROR line', () => {
    const bad = spawnSync(process.execPath, ['--import', 'tsx', 'main.ts', '--workflow', 'data-analysis', '--params', '{nope'], {
      cwd: APP, encoding: 'utf8',
    });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /ERROR: --params is not valid JSON/);
    const unknown = runCli('make-coffee', {});
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /ERROR: unknown workflow "make-coffee"/);
  });

  test('runs under ts-node --transpile-only too', () => {
    const run = spawnSync(
      path.join(APP, 'node_modules/.bin/ts-node'),
      ['--transpile-only', 'main.ts', '--workflow', 'data-analysis', '--params', '{"inputPath":"data/sample.csv"}', '--output-format', 'json'],
      { cwd: APP, encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(run.status, 0, run.stderr);
    assert.equal(resultOf(run.stdout).rows, 200);
  });
});
