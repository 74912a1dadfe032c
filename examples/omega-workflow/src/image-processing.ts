// image-processing: PNG -> grayscale thumbnail PNG.
import * as fs from 'node:fs';
import { PNG } from 'pngjs';
import { Params, WorkflowContext, WorkflowError, checkpoint } from './context';
import { delayMs, optionalNumber, requireString } from './params';
import { requireFile, writeOutput } from './paths';

export interface ImageProcessingResult {
  width: number;
  height: number;
  sourceWidth: number;
  sourceHeight: number;
  outputPath: string;
  bytes: number;
}

/** A grayscale image with alpha: 2 bytes per pixel (luma, alpha). */
export interface GrayImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** RGBA -> gray+alpha using Rec. 601 luma: 0.299 R + 0.587 G + 0.114 B. */
export function toGray(rgba: Uint8Array, width: number, height: number): GrayImage {
  const data = new Uint8Array(width * height * 2);
  for (let p = 0; p < width * height; p++) {
    const [r, g, b, a] = [rgba[4 * p], rgba[4 * p + 1], rgba[4 * p + 2], rgba[4 * p + 3]];
    data[2 * p] = Math.round(0.299 * r + 0.587 * g + 0.114 * b);
    data[2 * p + 1] = a;
  }
  return { width, height, data };
}

/**
 * Box-filter downscale: each output pixel is the average of the source pixels
 * it covers (luma weighted by alpha). Keeps the aspect ratio; never upscales.
 */
export function boxDownscale(src: GrayImage, targetWidth: number): GrayImage {
  const width = Math.min(targetWidth, src.width);
  const height = Math.max(1, Math.round((src.height * width) / src.width));
  const data = new Uint8Array(width * height * 2);
  for (let y = 0; y < height; y++) {
    const y0 = Math.floor((y * src.height) / height);
    const y1 = Math.max(y0 + 1, Math.floor(((y + 1) * src.height) / height));
    for (let x = 0; x < width; x++) {
      const x0 = Math.floor((x * src.width) / width);
      const x1 = Math.max(x0 + 1, Math.floor(((x + 1) * src.width) / width));
      let lumaTimesAlpha = 0;
      let alpha = 0;
      for (let sy = y0; sy < y1; sy++) {
        for (let sx = x0; sx < x1; sx++) {
          const i = 2 * (sy * src.width + sx);
          lumaTimesAlpha += src.data[i] * src.data[i + 1];
          alpha += src.data[i + 1];
        }
      }
      const n = (y1 - y0) * (x1 - x0);
      data[2 * (y * width + x)] = alpha ? Math.round(lumaTimesAlpha / alpha) : 0;
      data[2 * (y * width + x) + 1] = Math.round(alpha / n);
    }
  }
  return { width, height, data };
}

/** Encodes as 8-bit grayscale PNG, with an alpha channel only if one is needed. */
export function encodeGrayPng(img: GrayImage): Buffer {
  let opaque = true;
  for (let p = 0; p < img.width * img.height && opaque; p++) opaque = img.data[2 * p + 1] === 255;
  const data = opaque ? Buffer.from(img.data.filter((_, i) => i % 2 === 0)) : Buffer.from(img.data);
  const colorType = opaque ? 0 : 4; // 0 = grayscale, 4 = grayscale + alpha
  const png = { width: img.width, height: img.height, data } as unknown as PNG;
  return PNG.sync.write(png, { colorType, inputColorType: colorType, inputHasAlpha: !opaque });
}

export async function imageProcessing(params: Params, ctx: WorkflowContext): Promise<ImageProcessingResult> {
  const inputPath = requireString(params, 'inputPath');
  const outputPath = requireString(params, 'outputPath');
  const targetWidth = optionalNumber(params, 'width', { min: 1, max: 4096, integer: true }) ?? 64;
  const delay = delayMs(params);
  const input = requireFile('input PNG', inputPath);
  const total = 4;

  await checkpoint(ctx, delay);
  ctx.log('info', `decoding ${inputPath}`);
  let src: PNG;
  try {
    src = PNG.sync.read(await fs.promises.readFile(input, { signal: ctx.signal }));
  } catch (err) {
    if (ctx.signal.aborted) throw err;
    throw new WorkflowError(`cannot decode PNG ${inputPath}: ${(err as Error).message}`);
  }
  ctx.progress(1, total, `decoded ${src.width}x${src.height} PNG`);

  await checkpoint(ctx, delay);
  const gray = toGray(src.data, src.width, src.height);
  ctx.progress(2, total, 'converted to grayscale');

  await checkpoint(ctx, delay);
  const thumb = boxDownscale(gray, targetWidth);
  ctx.progress(3, total, `downscaled to ${thumb.width}x${thumb.height}`);

  await checkpoint(ctx, delay);
  const bytes = encodeGrayPng(thumb);
  await writeOutput(ctx, outputPath, bytes);
  ctx.progress(4, total, `wrote ${outputPath}`);
  ctx.log('info', `thumbnail ${thumb.width}x${thumb.height}, ${bytes.length} bytes`);
  return {
    width: thumb.width,
    height: thumb.height,
    sourceWidth: src.width,
    sourceHeight: src.height,
    outputPath,
    bytes: bytes.length,
  };
}
