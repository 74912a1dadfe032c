// Regenerates the committed sample inputs in data/ (deterministic: same bytes every run).
//   npm run samples   (or: npx tsx scripts/make-samples.ts)
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { RgbaImage, drawFrame, drawScene } from '../src/draw';

const DATA = path.resolve(__dirname, '..', 'data');

/** mulberry32: a small seeded PRNG, so the CSV is reproducible. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function writePng(file: string, img: RgbaImage): void {
  const png = new PNG({ width: img.width, height: img.height });
  png.data = Buffer.from(img.data);
  fs.writeFileSync(file, PNG.sync.write(png));
  console.log(`wrote ${path.relative(process.cwd(), file)} (${img.width}x${img.height})`);
}

function makeCsv(file: string, rows: number): void {
  const rand = prng(42);
  const cities = ['Lisbon', 'Oslo', 'Nairobi', 'Osaka', 'Quito', 'Perth', 'Tallinn', 'Denver'];
  const lines = ['id,city,temperature_c,humidity_pct,wind_kmh,rainfall_mm'];
  for (let i = 1; i <= rows; i++) {
    const city = cities[Math.floor(rand() * cities.length)];
    const temperature = (8 + 22 * rand()).toFixed(1);
    const humidity = Math.round(30 + 65 * rand());
    const wind = (40 * rand() ** 2).toFixed(1);
    // about 1 in 20 readings is missing, to show that `count` can be < rows
    const rainfall = rand() < 0.05 ? '' : (12 * rand() ** 3).toFixed(2);
    lines.push([i, city, temperature, humidity, wind, rainfall].join(','));
  }
  fs.writeFileSync(file, lines.join('\n') + '\n');
  console.log(`wrote ${path.relative(process.cwd(), file)} (${rows} rows)`);
}

fs.mkdirSync(path.join(DATA, 'frames'), { recursive: true });
makeCsv(path.join(DATA, 'sample.csv'), 200);
writePng(path.join(DATA, 'sample.png'), drawScene(256, 192));
const FRAMES = 8;
for (let i = 0; i < FRAMES; i++) {
  writePng(path.join(DATA, 'frames', `frame-${String(i + 1).padStart(2, '0')}.png`), drawFrame(i, FRAMES, 64, 48));
}
