// Faces over time in the browser: the crop as four numbers and the One Euro filter of
// runtime/tracking.py (what `toonify-fast video --live` smooths with), in plain JavaScript.
//
//     const smoother = new OneEuroSmoother(30);
//     smoother.add(trackId, quadParams(quad));
//     const steady = paramsQuad(smoother.smoothed(trackId));
//
// The page has no pixel motion to guide the filter (runtime/motion.py), so it smooths the raw
// params, as the Python smoother does when it is given no shifts.

// FFHQ quad [4][2] (TL, BL, BR, TR) -> [cx, cy, log half-side, angle].
export function quadParams(q) {
  const x = [(q[2][0] + q[3][0] - q[0][0] - q[1][0]) / 4, (q[2][1] + q[3][1] - q[0][1] - q[1][1]) / 4];
  const cx = (q[0][0] + q[1][0] + q[2][0] + q[3][0]) / 4, cy = (q[0][1] + q[1][1] + q[2][1] + q[3][1]) / 4;
  return [cx, cy, Math.log(Math.hypot(...x)), Math.atan2(x[1], x[0])];
}

// The inverse of quadParams: [4] -> [4][2] quad.
export function paramsQuad(p) {
  const s = Math.exp(p[2]);
  const x = [s * Math.cos(p[3]), s * Math.sin(p[3])], y = [-x[1], x[0]];
  const [cx, cy] = p;
  return [[cx - x[0] - y[0], cy - x[1] - y[1]], [cx - x[0] + y[0], cy - x[1] + y[1]],
          [cx + x[0] + y[0], cy + x[1] + y[1]], [cx + x[0] - y[0], cy + x[1] - y[1]]];
}

// params with the angle moved by whole turns to within pi of the previous one's.
export function unwrap(params, previous) {
  if (!previous) return params;
  const p = params.slice();
  const d = p[3] - previous[3] + Math.PI, turn = 2 * Math.PI;
  p[3] = previous[3] + (((d % turn) + turn) % turn) - Math.PI;
  return p;
}

// Causal low-pass whose cutoff rises with speed (Casiez et al., CHI 2012), per component.
// rate: samples per second; a call may pass the rate of this sample (a webcam's frames are not
// evenly spaced).
export class OneEuroFilter {
  constructor(rate, minCutoff = 1.0, beta = 2.0, dCutoff = 1.0) {
    Object.assign(this, {rate, minCutoff, beta, dCutoff});
    this.x = this.dx = null;
  }

  alpha(cutoff, rate) {
    return 1.0 / (1.0 + rate / (2 * Math.PI * cutoff));
  }

  filter(x, rate = this.rate) {
    if (this.x === null) {
      this.x = x.slice();
      this.dx = x.map(() => 0);
      return this.x;
    }
    const ad = this.alpha(this.dCutoff, rate);
    this.dx = this.dx.map((d, i) => d + ad * ((x[i] - this.x[i]) * rate - d));
    this.x = this.x.map((v, i) => v + this.alpha(this.minCutoff + this.beta * Math.abs(this.dx[i]), rate) * (x[i] - v));
    return this.x;
  }
}

// A One Euro filter per track; the centre in units of the track's first crop size, so beta means
// the same at any resolution (runtime.tracking.OneEuroSmoother).
export class OneEuroSmoother {
  constructor(rate, minCutoff = 1.0, beta = 2.0) {
    Object.assign(this, {rate, minCutoff, beta});
    this.tracks = new Map();
    this.values = new Map();
  }

  add(trackId, params, rate = this.rate) {
    let t = this.tracks.get(trackId);
    if (!t) {
      t = {filter: new OneEuroFilter(this.rate, this.minCutoff, this.beta), unit: Math.exp(params[2]), last: null};
      this.tracks.set(trackId, t);
    }
    const p = unwrap(params, t.last);
    t.last = p;
    const v = t.filter.filter([p[0] / t.unit, p[1] / t.unit, p[2], p[3]], rate);
    this.values.set(trackId, [v[0] * t.unit, v[1] * t.unit, v[2], v[3]]);
  }

  smoothed(trackId) {
    return this.values.get(trackId);
  }

  forget(trackId) {
    this.tracks.delete(trackId);
    this.values.delete(trackId);
  }
}
