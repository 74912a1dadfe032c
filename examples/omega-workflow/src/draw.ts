// Tiny software drawing, used for synthetic video frames and by
// scripts/make-samples.ts to make the committed sample images.

export interface RgbaImage {
  width: number;
  height: number;
  data: Uint8Array; // RGBA, 4 bytes per pixel
}

/** h in [0, 360), s and v in [0, 1] -> [r, g, b] in 0..255. */
export function hsv(h: number, s: number, v: number): [number, number, number] {
  const f = (n: number) => {
    const k = (n + h / 60) % 6;
    return Math.round(255 * (v - v * s * Math.max(0, Math.min(k, 4 - k, 1))));
  };
  return [f(5), f(3), f(1)];
}

function fill(img: RgbaImage, shade: (x: number, y: number) => [number, number, number] | null): void {
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      const rgb = shade(x, y);
      if (!rgb) continue;
      const i = 4 * (y * img.width + x);
      img.data.set([...rgb, 255], i);
    }
  }
}

/** Frame `index` of `count`: a ball moving across a slowly shifting gradient. */
export function drawFrame(index: number, count: number, width: number, height: number): RgbaImage {
  const img: RgbaImage = { width, height, data: new Uint8Array(width * height * 4) };
  const t = count > 1 ? index / count : 0;
  fill(img, (x, y) => hsv((360 * t + (120 * x) / width) % 360, 0.55, 0.35 + (0.5 * y) / height));
  const r = Math.max(2, Math.round(Math.min(width, height) / 6));
  const cx = r + (width - 2 * r) * t;
  const cy = height / 2 + (height / 2 - r) * Math.sin(2 * Math.PI * t) * 0.8;
  fill(img, (x, y) => ((x - cx) ** 2 + (y - cy) ** 2 <= r * r ? hsv((360 * t + 180) % 360, 0.9, 1) : null));
  return img;
}

/** A still scene (the sample PNG): sky gradient, sun, hills, a house. */
export function drawScene(width: number, height: number): RgbaImage {
  const img: RgbaImage = { width, height, data: new Uint8Array(width * height * 4) };
  const horizon = height * 0.62;
  fill(img, (_x, y) => hsv(205 - (25 * y) / height, 0.65 - (0.4 * y) / height, 0.95));
  const sun = { x: width * 0.78, y: height * 0.24, r: height * 0.12 };
  fill(img, (x, y) => ((x - sun.x) ** 2 + (y - sun.y) ** 2 <= sun.r ** 2 ? [255, 214, 64] : null));
  fill(img, (x, y) => {
    const hill = horizon - height * 0.1 * Math.sin((x / width) * Math.PI * 2.2);
    return y >= hill ? hsv(110 + (20 * (y - hill)) / height, 0.6, 0.75 - (0.4 * (y - hill)) / height) : null;
  });
  const house = { x0: width * 0.2, x1: width * 0.38, y0: horizon - height * 0.12, y1: horizon + height * 0.08 };
  fill(img, (x, y) => (x >= house.x0 && x < house.x1 && y >= house.y0 && y < house.y1 ? [178, 34, 34] : null));
  const roofTop = house.y0 - height * 0.1;
  const mid = (house.x0 + house.x1) / 2;
  fill(img, (x, y) => {
    if (y < roofTop || y >= house.y0) return null;
    const half = ((y - roofTop) / (house.y0 - roofTop)) * ((house.x1 - house.x0) / 2 + 4);
    return Math.abs(x - mid) <= half ? [90, 60, 40] : null;
  });
  return img;
}
