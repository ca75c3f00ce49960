// The toonify-fast page: find every face (face-api's 68 landmarks), FFHQ-align it by the rule of
// runtime/faces.py (align.js), convert it with ONNX Runtime Web (WebGPU where the browser has it,
// else WASM SIMD with threads), paste it back with the feathered mask; photos and the webcam.
//
//     const {toonify} = await import('./app.js');
//     const {canvas, faces} = await toonify(imageElement);    // faces: [{box, landmarks, quad}]
//
// Webcam mode keeps window.toonifyStats = {frames, framesWithFace, fps} current. URL parameters
// for tests and benchmarks: ?backend=wasm|webgpu|auto, ?threads=N.
import {alignRegion, cropTransform, featherMask, ffhqQuad, paddedRegion, roundHalfEven, warpBilinear} from './align.js';
import {OneEuroSmoother, paramsQuad, quadParams} from './track.js';

const BASE = new URL('./', import.meta.url);
const PARAMS = new URLSearchParams(location.search);
// face-api's tiny detector looks at the photo scaled to this side (a multiple of 32): small
// faces in group photos need more than its default 416; a webcam's face is near and big, and
// detection is most of a frame's time.
const DETECT_SIDE = 512;
const CAMERA_DETECT_SIDE = 320;
const MIN_SCORE = 0.5;
// x = u8 / 127.5 - 1 in float32, as runtime/images.py's hwc_to_nchw computes it.
const TO_MODEL = Float32Array.from({length: 256}, (_, u) => Math.fround(Math.fround(u / 127.5) - 1));

let loading = null;

// Loads the model, ONNX Runtime and face-api once; resolves to what the page runs on.
export function ready() {
  loading ??= init();
  return loading;
}

function threadCount() {
  if (PARAMS.has('threads')) return Math.max(1, parseInt(PARAMS.get('threads'), 10) || 1);
  // Without cross-origin isolation there is no SharedArrayBuffer: one thread, whatever is asked.
  return crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}

async function init() {
  const site = await (await fetch(new URL('model.json', BASE))).json();
  const meta = site.metadata;
  const info = {
    inputName: meta.input_name, outputName: meta.output_name, resolution: parseInt(meta.resolution, 10),
    sizeMultiple: parseInt(meta.size_multiple || '8', 10), alignment: meta.alignment || 'ffhq',
    styles: meta.styles ? meta.styles.split(',').map((s) => s.trim()).filter(Boolean) : null,
    defaultStrength: meta.default_strength !== undefined ? parseFloat(meta.default_strength) : null,
  };
  const wanted = PARAMS.get('backend') || 'auto';
  let adapter = null;
  if (wanted !== 'wasm' && site.webgpu && navigator.gpu) adapter = await navigator.gpu.requestAdapter().catch(() => null);
  if (wanted === 'webgpu' && !adapter) throw new Error('WebGPU was asked for (?backend=webgpu) but this browser has no adapter');
  const backend = adapter ? 'webgpu' : 'wasm';
  const ort = await import(new URL(backend === 'webgpu' ? 'ort/ort.webgpu.min.mjs' : 'ort/ort.wasm.min.mjs', BASE).href);
  ort.env.wasm.wasmPaths = new URL('ort/', BASE).href;
  ort.env.wasm.numThreads = threadCount();
  const started = performance.now();
  const session = await ort.InferenceSession.create(new URL(site.file, BASE).href, {
    executionProviders: backend === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'], graphOptimizationLevel: 'all'});
  const sessionMs = performance.now() - started;
  if (!session.inputNames.includes(info.inputName) || !session.outputNames.includes(info.outputName)) {
    throw new Error(`the model's metadata names input ${info.inputName} and output ${info.outputName}, ` +
                    `the graph has ${session.inputNames} and ${session.outputNames}`);
  }
  const faceapi = await import(new URL('face-api/face-api.esm.js', BASE).href);
  faceapi.tf.setWasmPaths(new URL('tfjs/', BASE).href);
  // setBackend('wasm') reports a failure by falling back (to WebGL); getBackend says what it got.
  await faceapi.tf.setBackend('wasm').catch(() => false);
  await faceapi.tf.ready();
  const models = new URL('face-api/model/', BASE).href;
  await faceapi.nets.tinyFaceDetector.loadFromUri(models);
  await faceapi.nets.faceLandmark68Net.loadFromUri(models);
  return {ort, session, info, faceapi, backend, threads: ort.env.wasm.numThreads, sessionMs,
          faceBackend: faceapi.tf.getBackend(), isolated: crossOriginIsolated,
          mask: featherMask(info.resolution), style: 0, strength: info.defaultStrength};
}

function canvasOf(width, height) {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function sizeOf(image) {
  return {width: image.naturalWidth || image.videoWidth || image.displayWidth || image.width,
          height: image.naturalHeight || image.videoHeight || image.displayHeight || image.height};
}

// A canvas holding a copy of any image source (img, canvas, video, ImageBitmap, ImageData).
function copyToCanvas(image) {
  const {width, height} = sizeOf(image);
  const canvas = canvasOf(width, height);
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  if (image instanceof ImageData) ctx.putImageData(image, 0, 0);
  else ctx.drawImage(image, 0, 0, width, height);
  return canvas;
}

// Faces in a canvas, largest first: {box: [left, top, right, bottom], landmarks: [[x, y] x 68], quad}.
export async function findFaces(canvas, detectSide = DETECT_SIDE) {
  const {faceapi} = await ready();
  const options = new faceapi.TinyFaceDetectorOptions({inputSize: detectSide, scoreThreshold: MIN_SCORE});
  const found = await faceapi.detectAllFaces(canvas, options).withFaceLandmarks();
  const faces = found.map((r) => {
    const b = r.detection.box;
    // face-api's points are continuous (pixel i spans [i, i + 1)); dlib's, which ffhqQuad expects,
    // have pixel centres on integers.
    const landmarks = r.landmarks.positions.map((p) => [p.x - 0.5, p.y - 0.5]);
    return {box: [b.left, b.top, b.right, b.bottom], landmarks, quad: ffhqQuad(landmarks), score: r.detection.score};
  });
  const area = (f) => (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]);
  return faces.sort((a, b) => area(b) - area(a));
}

async function resized(src, width, height) {
  const bitmap = await createImageBitmap(new ImageData(src.data, src.width, src.height),
                                         {resizeWidth: width, resizeHeight: height, resizeQuality: 'high'});
  const ctx = canvasOf(width, height).getContext('2d', {willReadFrequently: true});
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, width, height);
}

// The [size * size * 3] uint8 RGB crop of `quad` from ImageData `pixels`, as runtime/faces.py's
// align makes it: mirrored outside the photo, shrunk (antialiased) first where the warp would.
export async function alignFace(pixels, quad, size) {
  const region = alignRegion(quad, size);
  let src = paddedRegion(pixels, region);
  let A = cropTransform(quad, size);
  A[0][2] -= region.x0;
  A[1][2] -= region.y0;
  const scale = Math.sqrt(Math.abs(A[0][0] * A[1][1] - A[0][1] * A[1][0]));
  if (scale > 1) {
    const w = Math.max(1, roundHalfEven(src.width / scale)), h = Math.max(1, roundHalfEven(src.height / scale));
    const sx = w / src.width, sy = h / src.height;
    src = await resized(src, w, h);
    A = [A[0].map((v) => v * sx), A[1].map((v) => v * sy)];
  }
  return warpBilinear(src, A, size);
}

// The model on one [H * W * 3] uint8 RGB image: its raw [1, 3, H, W] float32 output.
export async function runModel(rgb, width, height) {
  const {ort, session, info, style, strength} = await ready();
  if (width % info.sizeMultiple || height % info.sizeMultiple) {
    throw new Error(`input size ${width}x${height} is not a multiple of ${info.sizeMultiple}`);
  }
  const n = width * height, x = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    x[i] = TO_MODEL[rgb[3 * i]];
    x[n + i] = TO_MODEL[rgb[3 * i + 1]];
    x[2 * n + i] = TO_MODEL[rgb[3 * i + 2]];
  }
  const feeds = {[info.inputName]: new ort.Tensor('float32', x, [1, 3, height, width])};
  // A conditioned model's style and strength inputs (as runtime.engine.Toonifier.run feeds them).
  if (session.inputNames.includes('style')) {
    feeds.style = new ort.Tensor('int64', BigInt64Array.from([BigInt(style)]), [1]);
  }
  if (session.inputNames.includes('strength')) {
    feeds.strength = new ort.Tensor('float32', Float32Array.from([strength ?? info.defaultStrength ?? 1]), [1]);
  }
  const out = await session.run(feeds);
  return out[info.outputName].data;
}

// [1, 3, H, W] float in [-1, 1] -> [H * W * 3] uint8 RGB, clipped and rounded as nchw_to_hwc does.
function toRgb(y, n) {
  const out = new Uint8Array(3 * n);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < n; i++) {
      const v = Math.fround(Math.fround(y[c * n + i] + 1) * 127.5);
      out[3 * i + c] = roundHalfEven(Math.min(Math.max(v, 0), 255));
    }
  }
  return out;
}

// Toon of a crop: the model's output as the uint8 image a user gets.
async function convertCrop(crop, size) {
  return toRgb(await runModel(crop, size, size), size * size);
}

// Warp a toon crop back over the face of `quad` in ctx, blended with the feathered mask.
function pasteBack(ctx, toon, quad, size, mask) {
  const rgba = new ImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    rgba.data.set(toon.subarray(3 * i, 3 * i + 3), 4 * i);
    rgba.data[4 * i + 3] = mask[i];
  }
  const crop = canvasOf(size, size);
  crop.getContext('2d').putImageData(rgba, 0, 0);
  const A = cropTransform(quad, size);
  ctx.save();
  ctx.setTransform(A[0][0], A[1][0], A[0][1], A[1][1], A[0][2], A[1][2]);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(crop, 0, 0);
  ctx.restore();
}

async function convertFaces(canvas, faces) {
  const {info, mask} = await ready();
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const crops = [];
  for (const face of faces) crops.push(await alignFace(pixels, face.quad, info.resolution));
  for (let i = 0; i < faces.length; i++) {
    pasteBack(ctx, await convertCrop(crops[i], info.resolution), faces[i].quad, info.resolution, mask);
  }
}

// A model trained on whole images: the image resized to the model resolution and back.
async function convertWhole(canvas) {
  const {info} = await ready();
  const r = info.resolution, ctx = canvas.getContext('2d', {willReadFrequently: true});
  const small = await resized(ctx.getImageData(0, 0, canvas.width, canvas.height), r, r);
  const rgb = new Uint8Array(r * r * 3);
  for (let i = 0; i < r * r; i++) rgb.set(small.data.subarray(4 * i, 4 * i + 3), 3 * i);
  const toon = await convertCrop(rgb, r), out = new ImageData(r, r);
  for (let i = 0; i < r * r; i++) {
    out.data.set(toon.subarray(3 * i, 3 * i + 3), 4 * i);
    out.data[4 * i + 3] = 255;
  }
  const bitmap = await createImageBitmap(out);
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
}

// Toonify every face of an image (img, canvas, video frame, ImageBitmap or ImageData) ->
// {canvas: the converted picture, faces: [{box, landmarks, quad, score}], largest first}.
// landmarks: [[x, y] x 68] per face from a detector of the app's own (dlib's convention: pixel
// centres on integers), used instead of face-api's.
export async function toonify(image, {maxFaces = Infinity, landmarks = null} = {}) {
  const {info} = await ready();
  const canvas = copyToCanvas(image);
  if (info.alignment === 'none') {
    await convertWhole(canvas);
    return {canvas, faces: []};
  }
  const given = landmarks && landmarks.map((lm) => {
    const xs = lm.map((p) => p[0]), ys = lm.map((p) => p[1]);
    return {box: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)], landmarks: lm, quad: ffhqQuad(lm)};
  });
  const faces = (given || await findFaces(canvas)).slice(0, maxFaces);
  await convertFaces(canvas, faces);
  return {canvas, faces};
}

// What the page runs on: {backend, threads, faceBackend, isolated, sessionMs, info}.
export async function describe() {
  const {backend, threads, faceBackend, isolated, sessionMs, info} = await ready();
  return {backend, threads, faceBackend, isolated, sessionMs, info};
}

// ---- webcam: getUserMedia, every frame smoothed by a One Euro filter per face (as --live) ----

const stats = {frames: 0, framesWithFace: 0, fps: 0};
window.toonifyStats = stats;
let camera = null;

// Faces of this frame matched to the previous frame's tracks (a face whose centre is within its
// previous crop's half-side keeps the track), so each face has its own filter.
function assignTracks(faces, cam) {
  const free = new Map(cam.tracks);
  const tracks = new Map();
  for (const face of faces) {
    const p = quadParams(face.quad);
    let id = null, best = Infinity;
    for (const [tid, q] of free) {
      const d = Math.hypot(p[0] - q[0], p[1] - q[1]);
      if (d < Math.exp(q[2]) && d < best) [id, best] = [tid, d];
    }
    if (id === null) id = cam.nextId++;
    free.delete(id);
    tracks.set(id, p);
    face.track = id;
  }
  for (const id of free.keys()) cam.smoother.forget(id);
  cam.tracks = tracks;
}

async function cameraFrame(cam, now) {
  const {videoWidth: w, videoHeight: h} = cam.video;
  if (!w || !h) return;
  if (cam.canvas.width !== w || cam.canvas.height !== h) [cam.canvas.width, cam.canvas.height] = [w, h];
  const ctx = cam.canvas.getContext('2d', {willReadFrequently: true});
  ctx.drawImage(cam.video, 0, 0, w, h);
  const faces = await findFaces(cam.canvas, CAMERA_DETECT_SIDE);
  const rate = cam.last === null ? cam.smoother.rate : 1000 / Math.max(now - cam.last, 1);
  cam.last = now;
  assignTracks(faces, cam);
  for (const face of faces) {
    cam.smoother.add(face.track, quadParams(face.quad), rate);
    face.quad = paramsQuad(cam.smoother.smoothed(face.track));
  }
  await convertFaces(cam.canvas, faces);
  stats.frames += 1;
  stats.framesWithFace += faces.length > 0 ? 1 : 0;
  cam.times.push(performance.now());
  while (cam.times.length > 1 && cam.times[cam.times.length - 1] - cam.times[0] > 2000) cam.times.shift();
  const span = (cam.times[cam.times.length - 1] - cam.times[0]) / 1000;
  stats.fps = span > 0 ? (cam.times.length - 1) / span : 0;
  cam.onFrame?.(stats);
}

// Start converting the webcam into `canvas` (video: a <video> element to play the stream in).
export async function startWebcam(video, canvas, onFrame = null) {
  await ready();
  if (camera) return camera;
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}, audio: false});
  video.srcObject = stream;
  await video.play();
  const rate = stream.getVideoTracks()[0].getSettings().frameRate || 30;
  const cam = camera = {video, canvas, stream, onFrame, smoother: new OneEuroSmoother(rate), tracks: new Map(),
                        nextId: 0, last: null, times: [], running: true};
  Object.assign(stats, {frames: 0, framesWithFace: 0, fps: 0});
  (async () => {
    while (cam.running) {
      // The next frame the camera presents; frames that come while one is converted are skipped.
      const now = await new Promise((resolve) => video.requestVideoFrameCallback((t) => resolve(t)));
      if (!cam.running) break;
      try {
        await cameraFrame(cam, now);
      } catch (e) {
        console.error(e);
        cam.running = false;
      }
    }
  })();
  return cam;
}

export function stopWebcam() {
  if (!camera) return;
  camera.running = false;
  camera.stream.getTracks().forEach((t) => t.stop());
  camera.video.srcObject = null;
  camera = null;
}

// ---- the page's controls ----

function setUp() {
  const $ = (id) => document.getElementById(id);
  const status = $('status'), result = $('result'), download = $('download');
  const show = (canvas) => {
    result.width = canvas.width;
    result.height = canvas.height;
    result.getContext('2d').drawImage(canvas, 0, 0);
    canvas.toBlob((blob) => {
      if (download.href) URL.revokeObjectURL(download.href);
      download.href = URL.createObjectURL(blob);
      download.hidden = false;
    }, 'image/png');
  };
  const open = async (file) => {
    if (!file || !file.type.startsWith('image/')) return;
    stopWebcam();
    $('webcam').textContent = 'Webcam';
    status.textContent = `converting ${file.name}…`;
    const bitmap = await createImageBitmap(file, {imageOrientation: 'from-image'});
    const started = performance.now();
    const {canvas, faces} = await toonify(bitmap);
    bitmap.close();
    show(canvas);
    download.download = file.name.replace(/\.[^.]*$/, '') + '_toon.png';
    status.textContent = faces.length
      ? `${file.name}: ${faces.length} face${faces.length > 1 ? 's' : ''}, ${Math.round(performance.now() - started)} ms`
      : `${file.name}: no face found`;
  };
  $('file').addEventListener('change', (e) => open(e.target.files[0]).catch(fail));
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    open(e.dataTransfer.files[0]).catch(fail);
  });
  $('webcam').addEventListener('click', async () => {
    if (camera) {
      stopWebcam();
      $('webcam').textContent = 'Webcam';
      return;
    }
    $('webcam').textContent = 'Stop';
    download.hidden = true;
    await startWebcam($('video'), result, (s) => { $('fps').textContent = `${s.fps.toFixed(1)} fps`; }).catch(fail);
  });
  const fail = (e) => {
    status.textContent = `error: ${e.message || e}`;
    console.error(e);
  };
  ready().then(async (state) => {
    const {info} = state;
    if (info.styles) {
      const select = $('style');
      info.styles.forEach((name, i) => select.add(new Option(name, String(i))));
      select.addEventListener('change', () => { state.style = parseInt(select.value, 10); });
      $('style-control').hidden = false;
    }
    if (info.defaultStrength !== null) {
      const slider = $('strength');
      slider.value = String(info.defaultStrength);
      slider.addEventListener('input', () => { state.strength = parseFloat(slider.value); });
      $('strength-control').hidden = false;
    }
    const d = await describe();
    status.textContent = `ready: ${d.backend === 'webgpu' ? 'WebGPU' : `WASM, ${d.threads} thread${d.threads > 1 ? 's' : ''}`}` +
                         ` · faces on ${d.faceBackend} · pick or drop a photo, or start the webcam`;
    document.body.dataset.ready = 'true';
  }, fail);
}

if (document.getElementById('result')) setUp();
