// The FFHQ crop in the browser: the same rule as runtime/faces.py (ffhq_quad, crop_transform,
// align's sampling, paste_back's feathered mask), in plain JavaScript that also runs under node.
//
//     const quad = ffhqQuad(landmarks);            // [[x, y] x 68] -> [[x, y] x 4]: TL, BL, BR, TR
//     const A = cropTransform(quad, 256);          // crop point p -> image point A[.][0..1] . p + A[.][2]
//
// Coordinates follow runtime/faces.py: landmarks and quads have pixel centres on integers (dlib's
// convention); crop_transform maps continuous coordinates (pixel i spans [i, i + 1)), as a canvas
// uses. tests/runtime/alignment_vectors.json holds the numbers both sides must reproduce.

export const DEFAULT_FEATHER = 0.1;

function mean(points) {
  let x = 0, y = 0;
  for (const p of points) { x += p[0]; y += p[1]; }
  return [x / points.length, y / points.length];
}

// [68][2] iBUG-68 landmarks -> [4][2] FFHQ crop quad (top-left, bottom-left, bottom-right, top-right).
export function ffhqQuad(landmarks) {
  const eyeLeft = mean(landmarks.slice(36, 42)), eyeRight = mean(landmarks.slice(42, 48));
  const eyeAvg = [(eyeLeft[0] + eyeRight[0]) / 2, (eyeLeft[1] + eyeRight[1]) / 2];
  const eyeToEye = [eyeRight[0] - eyeLeft[0], eyeRight[1] - eyeLeft[1]];
  const mouthAvg = [(landmarks[48][0] + landmarks[54][0]) / 2, (landmarks[48][1] + landmarks[54][1]) / 2];
  const eyeToMouth = [mouthAvg[0] - eyeAvg[0], mouthAvg[1] - eyeAvg[1]];
  let x = [eyeToEye[0] + eyeToMouth[1], eyeToEye[1] - eyeToMouth[0]];
  const half = Math.max(Math.hypot(...eyeToEye) * 2.0, Math.hypot(...eyeToMouth) * 1.8);
  const norm = Math.hypot(...x);
  const k = half / norm;
  x = [x[0] * k, x[1] * k];
  const y = [-x[1], x[0]];
  const c = [eyeAvg[0] + eyeToMouth[0] * 0.1, eyeAvg[1] + eyeToMouth[1] * 0.1];
  // float32, as ffhq_quad returns it: the crop transform is computed from these same numbers.
  const f = Math.fround;
  return [[f(c[0] - x[0] - y[0]), f(c[1] - x[1] - y[1])], [f(c[0] - x[0] + y[0]), f(c[1] - x[1] + y[1])],
          [f(c[0] + x[0] + y[0]), f(c[1] + x[1] + y[1])], [f(c[0] + x[0] - y[0]), f(c[1] + x[1] - y[1])]];
}

// [2][3] affine map from a size x size crop of `quad` to the image (runtime.faces.crop_transform).
export function cropTransform(quad, size) {
  const q = quad.map(([x, y]) => [x + 0.5, y + 0.5]);
  const [tl, bl, tr] = [q[0], q[1], q[3]];
  return [[(tr[0] - tl[0]) / size, (bl[0] - tl[0]) / size, tl[0]],
          [(tr[1] - tl[1]) / size, (bl[1] - tl[1]) / size, tl[1]]];
}

export function applyTransform(A, [x, y]) {
  return [A[0][0] * x + A[0][1] * y + A[0][2], A[1][0] * x + A[1][1] * y + A[1][2]];
}

// The crop's corners (0, 0), (0, S), (S, S), (S, 0) in the image: quad + 0.5.
export function cropCorners(A, size) {
  return [[0, 0], [0, size], [size, size], [size, 0]].map((p) => applyTransform(A, p));
}

// The region of the image `align` reads, padded by mirroring where the quad leaves the photo:
// {x0, y0, x1, y1} in pixels, as runtime/faces.py's align computes it.
export function alignRegion(quad, size) {
  const q = quad.map(([x, y]) => [x + 0.5, y + 0.5]);
  const margin = 4 + Math.floor(Math.hypot(q[3][0] - q[0][0], q[3][1] - q[0][1]) / size) * 4;
  const xs = q.map((p) => p[0]), ys = q.map((p) => p[1]);
  return {x0: Math.floor(Math.min(...xs)) - margin, y0: Math.floor(Math.min(...ys)) - margin,
          x1: Math.ceil(Math.max(...xs)) + margin, y1: Math.ceil(Math.max(...ys)) + margin};
}

// numpy's "reflect" padding: the edge pixel is not repeated.
function reflect(i, n) {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  i = ((i % period) + period) % period;
  return i < n ? i : period - i;
}

// RGBA pixels {data, width, height} of the region, mirrored outside the image.
export function paddedRegion(image, region) {
  const w = region.x1 - region.x0, h = region.y1 - region.y0;
  const out = new Uint8ClampedArray(w * h * 4);
  for (let y = 0; y < h; y++) {
    const sy = reflect(region.y0 + y, image.height);
    for (let x = 0; x < w; x++) {
      const s = (sy * image.width + reflect(region.x0 + x, image.width)) * 4, d = (y * w + x) * 4;
      out[d] = image.data[s]; out[d + 1] = image.data[s + 1]; out[d + 2] = image.data[s + 2]; out[d + 3] = 255;
    }
  }
  return {data: out, width: w, height: h};
}

// Bilinear affine warp, as PIL's: output pixel (i, j) samples src at A . (i + 0.5, j + 0.5) - 0.5
// (pixel centres); neighbours beyond the edge are clamped, and the value is truncated to an
// integer as PIL does. -> [size * size * 3] uint8 RGB.
export function warpBilinear(src, A, size) {
  const out = new Uint8Array(size * size * 3);
  const {data, width, height} = src;
  for (let j = 0; j < size; j++) {
    for (let i = 0; i < size; i++) {
      const u = A[0][0] * (i + 0.5) + A[0][1] * (j + 0.5) + A[0][2] - 0.5;
      const v = A[1][0] * (i + 0.5) + A[1][1] * (j + 0.5) + A[1][2] - 0.5;
      const x0 = Math.floor(u), y0 = Math.floor(v), fx = u - x0, fy = v - y0;
      const xa = Math.min(Math.max(x0, 0), width - 1), xb = Math.min(Math.max(x0 + 1, 0), width - 1);
      const ya = Math.min(Math.max(y0, 0), height - 1), yb = Math.min(Math.max(y0 + 1, 0), height - 1);
      const p00 = (ya * width + xa) * 4, p10 = (ya * width + xb) * 4;
      const p01 = (yb * width + xa) * 4, p11 = (yb * width + xb) * 4;
      const d = (j * size + i) * 3;
      for (let c = 0; c < 3; c++) {
        const top = data[p00 + c] + (data[p10 + c] - data[p00 + c]) * fx;
        const bottom = data[p01 + c] + (data[p11 + c] - data[p01 + c]) * fx;
        out[d + c] = Math.floor(top + (bottom - top) * fy);
      }
    }
  }
  return out;
}

// [size * size] uint8 blend mask (255 = the toon), runtime/faces.py's _feather_mask: 255 inside,
// falling by a smoothstep to 0 over the outer `feather` fraction of the side.
export function featherMask(size, feather = DEFAULT_FEATHER) {
  const edge = new Float64Array(size);
  for (let i = 0; i < size; i++) {
    const u = (i + 0.5) / size;
    edge[i] = Math.min(u, 1 - u);
  }
  const mask = new Uint8Array(size * size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const e = Math.min(edge[y], edge[x]);
      let m = 1;
      if (feather > 0) {
        const r = Math.min(Math.max(e / feather, 0), 1);
        m = r * r * (3 - 2 * r);
      }
      mask[y * size + x] = roundHalfEven(m * 255);
    }
  }
  return mask;
}

// numpy's rint: halves go to the even neighbour.
export function roundHalfEven(v) {
  const r = Math.round(v);
  return (r - v === 0.5 && r % 2 !== 0) ? r - 1 : r;
}
