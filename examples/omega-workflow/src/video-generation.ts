// video-generation: a folder of PNG frames (or N synthetic frames) -> animated GIF.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GIFEncoder, applyPalette, quantize } from 'gifenc';
import { PNG } from 'pngjs';
import { Params, WorkflowContext, WorkflowError, checkpoint } from './context';
import { RgbaImage, drawFrame } from './draw';
import { delayMs, optionalNumber, optionalString, requireString } from './params';
import { requireDir, writeOutput } from './paths';

export interface VideoGenerationResult {
  frames: number;
  width: number;
  height: number;
  fps: number;
  durationMs: number;
  outputPath: string;
  bytes: number;
}

/** Where frames come from: files in a folder, or drawn on the fly. */
type FrameSource = { count: number; label: string; load(i: number): Promise<RgbaImage> };

function folderSource(dirParam: string, ctx: WorkflowContext): FrameSource {
  const dir = requireDir('frames folder', dirParam);
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.toLowerCase().endsWith('.png'))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  if (files.length === 0) throw new WorkflowError(`no .png frames in ${dirParam}`);
  return {
    count: files.length,
    label: `${files.length} PNG frames from ${dirParam}`,
    async load(i) {
      const buf = await fs.promises.readFile(path.join(dir, files[i]), { signal: ctx.signal });
      try {
        const png = PNG.sync.read(buf);
        return { width: png.width, height: png.height, data: new Uint8Array(png.data) };
      } catch (err) {
        throw new WorkflowError(`cannot decode frame ${files[i]}: ${(err as Error).message}`);
      }
    },
  };
}

function syntheticSource(count: number, width: number, height: number): FrameSource {
  return { count, label: `${count} synthetic ${width}x${height} frames`, load: async (i) => drawFrame(i, count, width, height) };
}

export async function videoGeneration(params: Params, ctx: WorkflowContext): Promise<VideoGenerationResult> {
  const outputPath = requireString(params, 'outputPath');
  const framesDir = optionalString(params, 'framesDir') ?? optionalString(params, 'inputPath');
  const synthetic = optionalNumber(params, 'frames', { min: 1, max: 500, integer: true });
  const fps = optionalNumber(params, 'fps', { min: 0.1, max: 100 }) ?? 10;
  const delay = delayMs(params);
  let source: FrameSource;
  if (framesDir !== undefined) {
    source = folderSource(framesDir, ctx);
  } else if (synthetic !== undefined) {
    const w = optionalNumber(params, 'width', { min: 8, max: 1024, integer: true }) ?? 64;
    const h = optionalNumber(params, 'height', { min: 8, max: 1024, integer: true }) ?? 48;
    source = syntheticSource(synthetic, w, h);
  } else {
    throw new WorkflowError('give params.framesDir (or inputPath), a folder of PNG frames, or params.frames, a number');
  }

  ctx.log('info', `encoding ${source.label} at ${fps} fps`);
  const frameDelay = Math.round(1000 / fps);
  const gif = GIFEncoder();
  const total = source.count + 1;
  let size: { width: number; height: number } | undefined;
  for (let i = 0; i < source.count; i++) {
    await checkpoint(ctx, delay);
    const frame = await source.load(i);
    size ??= { width: frame.width, height: frame.height };
    if (frame.width !== size.width || frame.height !== size.height) {
      throw new WorkflowError(`frame ${i + 1} is ${frame.width}x${frame.height}, expected ${size.width}x${size.height}`);
    }
    const palette = quantize(frame.data, 256);
    gif.writeFrame(applyPalette(frame.data, palette), frame.width, frame.height, { palette, delay: frameDelay, repeat: 0 });
    ctx.progress(i + 1, total, `encoded frame ${i + 1}/${source.count}`);
  }
  gif.finish();

  await checkpoint(ctx, delay);
  const bytes = gif.bytes();
  await writeOutput(ctx, outputPath, bytes);
  ctx.progress(total, total, `wrote ${outputPath}`);
  const { width, height } = size!;
  ctx.log('info', `GIF ${width}x${height}, ${source.count} frames, ${bytes.length} bytes`);
  return { frames: source.count, width, height, fps, durationMs: frameDelay * source.count, outputPath, bytes: bytes.length };
}
