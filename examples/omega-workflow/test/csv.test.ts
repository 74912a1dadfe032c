// The CSV reader and the stats, on small hand-written inputs.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { columnStats, dataAnalysis, parseCsv } from '../src/data-analysis';
import { withDefaults } from '../src/context';
import { tempDir } from './helpers';

const out = tempDir();
after(() => fs.rmSync(out, { recursive: true, force: true }));

test('parseCsv handles quotes, escaped quotes, CRLF and blank lines', () => {
  const text = 'name,note,value\r\n"Washington, D.C.","say ""hi""",3\r\n\r\nOslo,,4\n';
  assert.deepEqual(parseCsv(text), [
    ['name', 'note', 'value'],
    ['Washington, D.C.', 'say "hi"', '3'],
    ['Oslo', '', '4'],
  ]);
});

test('columnStats: odd and even counts, sample standard deviation', () => {
  assert.deepEqual(columnStats([3, 1, 2]), { count: 3, min: 1, max: 3, mean: 2, median: 2, stddev: 1 });
  assert.equal(columnStats([4, 1, 3, 2]).median, 2.5);
  assert.equal(columnStats([7]).stddev, 0);
});

test('absolute input paths work, and a ragged row is reported by line', async () => {
  const good = path.join(out, 'good.csv');
  fs.writeFileSync(good, 'city,temp\n"Quito, EC",14\nOslo,\nPerth,20\n');
  const result = await dataAnalysis({ inputPath: good }, withDefaults({}));
  assert.deepEqual(result.textColumns, ['city']);
  assert.deepEqual(result.columns.temp, { count: 2, min: 14, max: 20, mean: 17, median: 17, stddev: Math.sqrt(18) });

  const ragged = path.join(out, 'ragged.csv');
  fs.writeFileSync(ragged, 'a,b\n1,2\n3\n');
  await assert.rejects(dataAnalysis({ inputPath: ragged }, withDefaults({})), /CSV row 3 has 1 fields, the header has 2/);
});
