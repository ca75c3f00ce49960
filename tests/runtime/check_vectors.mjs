// The JavaScript side of tests/runtime/alignment_vectors.json: the largest difference between what
// runtime/web/align.js and track.js compute and what the Python side wrote. The same module runs
// under node (test_web.py) and in the page (the browser test imports it through a route).
//
//     const errors = maxErrors(vectors, align, track);   // {quad, transform, corners, params, one_euro, mask}

function maxDiff(a, b) {
  const x = a.flat(Infinity), y = b.flat(Infinity);
  if (x.length !== y.length) return Infinity;
  return x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
}

export function maxErrors(vectors, align, track) {
  const errors = {quad: 0, transform: 0, corners: 0, params: 0, one_euro: 0, mask: 0, cases: vectors.cases.length};
  for (const c of vectors.cases) {
    const quad = align.ffhqQuad(c.landmarks);
    const A = align.cropTransform(quad, c.size);
    errors.quad = Math.max(errors.quad, maxDiff(quad, c.quad));
    errors.transform = Math.max(errors.transform, maxDiff(A, c.transform));
    errors.corners = Math.max(errors.corners, maxDiff(align.cropCorners(A, c.size), c.corners));
    errors.params = Math.max(errors.params, maxDiff(track.quadParams(quad), c.params));
  }
  const e = vectors.one_euro;
  const smoother = new track.OneEuroSmoother(e.rate, e.min_cutoff, e.beta);
  e.inputs.forEach((p, t) => {
    smoother.add(0, p);
    errors.one_euro = Math.max(errors.one_euro, maxDiff(smoother.smoothed(0), e.outputs[t]));
  });
  const f = vectors.feather;
  errors.mask = maxDiff(Array.from(align.featherMask(f.size, f.feather)), f.mask.flat());
  return errors;
}
