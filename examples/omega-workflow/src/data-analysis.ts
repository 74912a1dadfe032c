// data-analysis: summary statistics for every numeric column of a CSV file.
import * as fs from 'node:fs';
import { Params, WorkflowContext, WorkflowError, checkpoint } from './context';
import { delayMs, optionalString, optionalStringArray, requireString } from './params';
import { requireFile, writeOutput } from './paths';

export interface ColumnStats {
  count: number; // non-empty values
  min: number;
  max: number;
  mean: number;
  median: number;
  stddev: number; // sample standard deviation (n - 1); 0 for a single value
}

export interface DataAnalysisResult {
  inputPath: string;
  outputPath?: string;
  rows: number;
  columns: Record<string, ColumnStats>;
  textColumns: string[];
}

/** RFC 4180 CSV: quoted fields, "" escapes, CRLF or LF. Blank lines are skipped. */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c === '"' && field === '') {
      quoted = true;
    } else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(field);
      if (row.length > 1 || row[0] !== '') rows.push(row);
      row = [];
      field = '';
    } else {
      field += c;
    }
  }
  if (quoted) throw new WorkflowError('CSV ends inside a quoted field');
  row.push(field);
  if (row.length > 1 || row[0] !== '') rows.push(row);
  return rows;
}

export function columnStats(values: number[]): ColumnStats {
  const n = values.length;
  const sorted = [...values].sort((a, b) => a - b);
  const mean = values.reduce((sum, v) => sum + v, 0) / n;
  const mid = Math.floor(n / 2);
  const median = n % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  const variance = n > 1 ? values.reduce((sum, v) => sum + (v - mean) ** 2, 0) / (n - 1) : 0;
  return { count: n, min: sorted[0], max: sorted[n - 1], mean, median, stddev: Math.sqrt(variance) };
}

/** The numbers of a column, or null if any non-empty cell is not a number. */
function numericValues(cells: string[]): number[] | null {
  const values: number[] = [];
  for (const cell of cells) {
    const s = cell.trim();
    if (s === '') continue;
    const v = Number(s);
    if (!Number.isFinite(v)) return null;
    values.push(v);
  }
  return values.length > 0 ? values : null;
}

export async function dataAnalysis(params: Params, ctx: WorkflowContext): Promise<DataAnalysisResult> {
  const inputPath = requireString(params, 'inputPath');
  const outputPath = optionalString(params, 'outputPath');
  const wanted = optionalStringArray(params, 'columns');
  const delay = delayMs(params);
  const input = requireFile('input CSV', inputPath);

  await checkpoint(ctx, delay);
  ctx.log('info', `reading ${inputPath}`);
  const text = await fs.promises.readFile(input, { encoding: 'utf8', signal: ctx.signal });
  const [header, ...records] = parseCsv(text);
  if (!header) throw new WorkflowError(`input CSV is empty: ${inputPath}`);
  records.forEach((record, i) => {
    if (record.length !== header.length) {
      throw new WorkflowError(`CSV row ${i + 2} has ${record.length} fields, the header has ${header.length}`);
    }
  });
  const names = wanted ?? header;
  const missing = names.filter((name) => !header.includes(name));
  if (missing.length) {
    throw new WorkflowError(`unknown column(s) ${missing.join(', ')}; the CSV has: ${header.join(', ')}`);
  }
  const total = 1 + names.length + (outputPath ? 1 : 0);
  ctx.progress(1, total, `parsed ${records.length} rows x ${header.length} columns`);

  const columns: Record<string, ColumnStats> = {};
  const textColumns: string[] = [];
  for (const [i, name] of names.entries()) {
    await checkpoint(ctx, delay);
    const col = header.indexOf(name);
    const values = numericValues(records.map((record) => record[col]));
    if (values) {
      columns[name] = columnStats(values);
    } else if (wanted) {
      throw new WorkflowError(`column ${name} is not numeric`);
    } else {
      textColumns.push(name);
    }
    ctx.progress(2 + i, total, values ? `analysed column ${name}` : `skipped text column ${name}`);
  }

  const result: DataAnalysisResult = { inputPath, rows: records.length, columns, textColumns };
  if (outputPath) {
    await checkpoint(ctx, delay);
    result.outputPath = outputPath;
    await writeOutput(ctx, outputPath, JSON.stringify(result, null, 2) + '\n');
    ctx.progress(total, total, `wrote ${outputPath}`);
  }
  ctx.log('info', `analysed ${Object.keys(columns).length} numeric column(s) over ${records.length} rows`);
  return result;
}
