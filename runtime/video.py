"""Video and frame-folder conversion: every face of every frame toonified, in one pass and
bounded memory whatever the clip length.

    convert_video(VideoConfig(Path("clip.mp4"), Path("toon.mp4"), model=Path("exports/toonify.onnx")))

Threads joined by bounded queues: (1) decode, follow the faces (runtime.tracking), smooth each
face's crop over time (guided by the face's motion measured from its pixels, runtime.motion)
and align it; (2) run the model on batches of crops, on CPU one
single-threaded run per core at a time; (3) paste back and encode. The offline smoothing is a
Gaussian over the frames before and after, so stage 1 holds each frame until 3 sigma later
frames are tracked (a fixed lookahead of 18 frames by default); `live` uses a causal One Euro
filter instead, with no lookahead, as a webcam needs.
Timestamps and audio packets are copied; the output appears (one rename, or copied into a device
or pipe) only when the whole run has succeeded, so Ctrl-C or a crash leaves nothing half-written.
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from rich.markup import escape

from runtime.common import (UsageError, atomic_path, check_writable, console, output_suffix, printable, progress,
                            write_json_atomic, written_in_place)
from runtime.engine import (Toonifier, batch_setting, find_model, model_setting, physical_cores, provider_setting,
                            style_setting)
from runtime.faces import FaceAligner, align, paste_back
from runtime.motion import CropSlip
from runtime.tracking import (CropMotion, CropOffset, FaceTracker, GaussianWindow, OneEuroSmoother, params_quad,
                              quad_params)
from runtime.options import setting
from runtime.videoio import FolderReader, FolderWriter, Frame, VideoError, VideoReader, VideoWriter, atomic_dir

QUEUE_FRAMES = 16        # frames in flight between two pipeline stages


@dataclass(frozen=True)
class VideoConfig:
    input: Path = setting(help="A video file (any format FFmpeg reads) or a folder of frames (converted in name "
                               "order).", metavar="SOURCE")
    output: Path | None = setting(
        None, "Output video (.mp4, .mkv, .mov, .webm: the extension picks the container) or folder. "
              "Default: SOURCE_toon.mp4, or the folder SOURCE_toon for frames.")
    model: Path | None = model_setting()
    provider: str = provider_setting()
    batch_size: int | None = batch_setting()
    # ONNX Runtime threads per run on CPU (None: 1, one run per core at a time; see _engine).
    threads: int | None = setting(None, cli=False)
    start: float | None = setting(None, "Start this many seconds into the clip.", min=0)
    end: float | None = setting(None, "Stop this many seconds into the clip.", min=0)
    max_frames: int | None = setting(None, "Convert at most this many frames.", min=1)
    crop: bool = setting(False, "Write only the aligned toon face: a square video at the model resolution.")
    live: bool = setting(False, "Smooth the crop with a causal One Euro filter (as a webcam needs) instead of a "
                                "Gaussian over the frames before and after.")
    guided: bool = setting(True, "Let the smoothing follow the face's motion measured from its pixels, so only "
                                 "landmark wobble is averaged away (--no-guide: average the landmarks alone, which "
                                 "lags a moving face).", flags=("--guide/--no-guide",))
    style: str | None = style_setting()
    strength: tuple[float, float] | None = setting(
        None, "How strong the style is, 0 (the face's reconstruction) to 1 (the full style); LO:HI ramps it linearly "
              "from the first frame to the last, e.g. 0:1 (default: the model's).",
        cli=Optional[str], metavar="S|LO:HI", parse=lambda text: None if text is None else parse_strength_ramp(text))
    codec: str = setting("libx264", "Video encoder (FFmpeg name).")
    crf: int = setting(18, "Constant rate factor for x264/x265/VPx/AV1: lower is better and bigger.", min=0, max=63)
    # Guided, a wider window costs no lag (the motion is followed, only the landmarks' residual is
    # averaged); bench/video.py measures the jitter of each width against a known path.
    sigma: float = setting(6.0, "Width of the offline smoothing, in frames (0: none). Wider averages more landmark "
                                "wobble away and holds 3 sigma frames in memory.", min=0)
    detect_every: int = setting(5, cli=False)     # a detection every this many frames while faces are followed
    report: Path | None = setting(
        None, "Write a JSON report: faces per frame, crop jitter with and without smoothing (how far the face "
              "slides within its crop, and the crop's own motion), face-region change of input and output.")


_END = object()


def parse_strength_ramp(text: str) -> tuple[float, float]:
    """'0.6' -> (0.6, 0.6), one strength for the clip; '0:1' -> (0.0, 1.0), a ramp over it; each in [0, 1]."""
    try:
        lo, _, hi = text.partition(":")
        ramp = float(lo), float(hi if hi else lo)
    except ValueError:
        ramp = None
    if ramp is None or not all(0.0 <= v <= 1.0 for v in ramp):
        raise UsageError(f"cannot read --strength {text!r}", hint="give a value in [0, 1] such as 0.6, or a ramp LO:HI such as 0:1")
    return ramp


def strength_ramp(strength: tuple[float, float] | None, frames: int | None) -> Callable[[int], float | None]:
    """Frame index -> its strength: lo at frame 0 to hi at frame frames - 1, linearly (None: the model's default)."""
    if strength is None:
        return lambda index: None
    lo, hi = strength
    if lo == hi:
        return lambda index: lo
    if not frames:
        raise UsageError("a strength ramp needs the clip's frame count, which this source does not tell",
                         hint="give --max-frames, or one strength")
    return lambda index: lo + (hi - lo) * min(1.0, index / max(1, frames - 1))


class _Stopped(Exception):
    """Raised in a stage when another stage failed or the run was interrupted."""


class _Stages:
    """Threads joined by bounded queues. The first error in any stage stops them all; join()
    re-raises it in the calling thread. `busy` adds up each kind of work's seconds."""

    def __init__(self):
        self.stop, self.errors, self.threads = threading.Event(), [], []
        self.busy, self.lock = defaultdict(float), threading.Lock()

    def start(self, fn) -> None:
        def run():
            try:
                fn()
            except _Stopped:
                pass
            except BaseException as e:        # handed to the main thread by join()
                self.errors.append(e)
                self.stop.set()
        thread = threading.Thread(target=run, name=f"toonify-video-{fn.__name__}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def put(self, q: queue.Queue, item) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                return q.put(item, timeout=0.1)
        raise _Stopped

    def get(self, q: queue.Queue):
        while not self.stop.is_set():
            with contextlib.suppress(queue.Empty):
                return q.get(timeout=0.1)
        raise _Stopped

    def wait(self, future: Future):
        while not self.stop.is_set():
            with contextlib.suppress(FutureTimeout):
                return future.result(timeout=0.1)
        raise _Stopped

    @contextlib.contextmanager
    def timed(self, work: str):
        start = time.perf_counter()
        yield
        with self.lock:                        # inference runs in several threads at once
            self.busy[work] += time.perf_counter() - start

    def join(self) -> None:
        for thread in self.threads:
            thread.join()
        if self.errors:
            raise self.errors[0]


@dataclass
class CropMeasures:
    """The crops' motion before and after smoothing, how far smoothing moved them, and (when
    `slip`) how far the face slides within them (the report's crop_motion)."""
    slip: bool = False
    raw: CropMotion = field(default_factory=CropMotion)
    smooth: CropMotion = field(default_factory=CropMotion)
    offset: CropOffset = field(default_factory=CropOffset)
    raw_slip: CropSlip = field(default_factory=CropSlip)
    smooth_slip: CropSlip = field(default_factory=CropSlip)


def _centre_params(image: np.ndarray) -> np.ndarray:
    """The largest centred square, for --crop frames before any face was seen."""
    h, w = image.shape[:2]
    return np.array([(w - 1) / 2, (h - 1) / 2, math.log(min(h, w) / 2), 0.0])


def smoothed_quads(source, cfg: VideoConfig, tracker: FaceTracker, motion: CropMeasures) -> Iterator[tuple[Frame, list[np.ndarray]]]:
    """Frames with their smoothed FFHQ quads, largest face first (--crop: exactly one quad, the
    largest face's, else the last one seen). `motion` measures the crops before and after smoothing."""
    smoother = OneEuroSmoother(float(source.rate or 30)) if cfg.live else GaussianWindow(cfg.sigma)
    pending, held = deque(), None

    def finish(frame: Frame, raw: dict[int, np.ndarray]):
        nonlocal held
        values = {i: smoother.smoothed(i, frame.index) for i in raw}
        for i, value in values.items():
            motion.smooth.add(i, value)
            motion.offset.add(raw[i], value)
            if motion.slip:
                motion.smooth_slip.add(i, frame.image, value)
        motion.smooth_slip.forget(set(values))
        smoother.forget(frame.index)
        params = sorted(values.values(), key=lambda p: -p[2])
        frame.faces = len(params)
        if cfg.crop:
            held = params[0] if params else held
            params = [held if held is not None else _centre_params(frame.image)]
        return frame, [params_quad(p) for p in params]

    for frame in source.frames():
        raw = {}
        for track_id, quad in tracker(frame.image):
            raw[track_id] = p = quad_params(quad)
            smoother.add(track_id, frame.index, p, tracker.shifts[track_id] if cfg.guided else None)
            motion.raw.add(track_id, p)
            if motion.slip:
                motion.raw_slip.add(track_id, frame.image, p)
        motion.raw_slip.forget(set(raw))
        pending.append((frame, raw))
        if len(pending) > smoother.lookahead:
            yield finish(*pending.popleft())
    while pending:
        yield finish(*pending.popleft())


def crop_track(cfg: VideoConfig) -> dict[int, np.ndarray]:
    """The crop the video path uses on each frame of cfg.input (its largest face), as quad_params
    [cx, cy, log half-side, angle], by frame index: decoding, tracking and smoothing as configured.
    What tests and bench/video.py judge the smoothing by."""
    source = VideoReader(cfg.input) if not cfg.input.is_dir() else FolderReader(cfg.input)
    return {frame.index: quad_params(quads[0])
            for frame, quads in smoothed_quads(source, cfg, FaceTracker(cfg.detect_every), CropMeasures()) if quads}


class FrameStats:
    """Per-frame face counts and, for the report, how much the face region changes between
    consecutive frames in the input and in the output (mean absolute difference, 0-255)."""

    def __init__(self, measure: bool):
        self.measure, self.faces, self.change, self.previous = measure, [], {"input": [], "output": []}, None

    def observe(self, frame: Frame, quads, crops, out: np.ndarray, crop: bool) -> None:
        self.faces.append(frame.faces)
        if not (self.measure and frame.faces):
            self.previous = None
            return
        before = crops[0] if crop else frame.image
        h, w = out.shape[:2]
        x0, y0 = np.clip(np.floor(quads[0].min(0)).astype(int), 0, (w, h))
        x1, y1 = np.clip(np.ceil(quads[0].max(0)).astype(int) + 1, 0, (w, h))
        region = np.s_[:, :] if crop else np.s_[y0:y1, x0:x1]
        if self.previous is not None and self.previous[0].shape == before.shape:
            for key, now, then in (("input", before, self.previous[0]), ("output", out, self.previous[1])):
                self.change[key].append(float(np.abs(now[region].astype(np.int16) - then[region]).mean()))
        self.previous = before, out


def run_stages(items: Iterator, toonifier: Toonifier, workers: int, sink, stats: FrameStats, crop: bool,
               advance, style: str | None = None,
               strength_at: Callable[[int], float | None] = lambda index: None) -> dict[str, float]:
    """decode + track + align -> batched inference -> paste back + encode: one thread each, and
    `workers` inference runs at a time; every crop of frame i at strength_at(i) (strength_ramp).
    Returns the seconds each kind of work was busy."""
    stages, aligned, done = _Stages(), queue.Queue(QUEUE_FRAMES), queue.Queue(QUEUE_FRAMES)
    size = toonifier.resolution

    def align_stage():
        while True:
            with stages.timed("decode_and_track"):
                item = next(items, _END)
            if item is _END:
                return stages.put(aligned, _END)
            frame, quads = item
            with stages.timed("align"):
                crops = [align(frame.image, q, size) for q in quads]
            stages.put(aligned, (frame, quads, crops))

    def write_stage():
        while (item := stages.get(done)) is not _END:
            frame, quads, crops, toons, first = item
            toons = stages.wait(toons)[first:first + len(crops)] if crops else []
            with stages.timed("paste_back"):
                out = toons[0] if crop else frame.image
                for quad, toon in zip([] if crop else quads, toons):
                    out = paste_back(out, toon, quad)
                stats.observe(frame, quads, crops, out, crop)
            with stages.timed("encode"):
                sink.write(frame, out, None if crop else frame.alpha)
            advance()

    def run(batch, strengths):
        with stages.timed("inference"):
            if style is None and None in strengths:      # a one-input model, or the model's own defaults
                return toonifier.run(batch)
            return toonifier.run(batch, style=style, strength=None if None in strengths else strengths)

    def infer(pool):
        pending, crops = [], 0
        while True:
            item = stages.get(aligned)
            if item is not _END:
                pending.append(item)
                crops += len(item[2])
            # The output keeps the order: a frame without faces waits only for a batch begun before it.
            if pending and (item is _END or not crops or crops >= toonifier.batch_size or len(pending) >= QUEUE_FRAMES):
                strengths = [strength_at(frame.index) for frame, _, cs in pending for _ in cs]
                toons, first = pool.submit(run, [c for _, _, cs in pending for c in cs], strengths) if crops else None, 0
                for frame, quads, cs in pending:
                    stages.put(done, (frame, quads, cs, toons, first))
                    first += len(cs)
                pending, crops = [], 0
            if item is _END:
                return stages.put(done, _END)

    stages.start(align_stage)
    stages.start(write_stage)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="toonify-video-inference")
    try:
        infer(pool)
    except _Stopped:
        pass                                   # a stage failed: join() raises its error
    except BaseException:
        stages.stop.set()                      # Ctrl-C or an inference error: stop the threads first
        with contextlib.suppress(BaseException):
            stages.join()
        raise
    finally:
        pool.shutdown(cancel_futures=stages.stop.is_set())    # after a failure nobody waits for the runs queued
    stages.join()
    return dict(stages.busy)


def default_output(source: Path) -> Path:
    """clip.mp4 -> clip_toon.mp4 beside it; a folder of frames -> the folder NAME_toon beside it."""
    return source.with_name(f"{source.name}_toon") if source.is_dir() else source.with_name(f"{source.stem}_toon.mp4")


def _is_folder(path: Path) -> bool:
    """A folder of frames is asked for by a name without an extension, unless it names a device or
    pipe (/dev/null, /dev/stdout: a video, MP4 where there is no extension, written into it)."""
    if written_in_place(path):
        return False
    return path.is_dir() or not path.suffix or str(path).endswith(("/", os.sep))


def _open_source(cfg: VideoConfig):
    """Check the paths and options before any work; returns the frame reader."""
    if not cfg.input.exists():
        raise UsageError("no such file or folder", cfg.input)
    if not cfg.input.is_dir() and not cfg.input.is_file():
        # A named pipe or a device: FFmpeg would wait on it forever, and a second pass (audio) cannot re-read it.
        raise UsageError("not a regular file (a named pipe, device or socket): refused", cfg.input,
                         hint="copy it into a file first")
    if cfg.output.resolve() == cfg.input.resolve():
        raise UsageError("the output would overwrite the input", cfg.output, hint="choose another -o")
    check_writable(cfg.output)
    if cfg.report is not None:
        check_writable(cfg.report)
    if (cfg.report is not None and not written_in_place(cfg.report)
            and cfg.report.resolve() in (cfg.input.resolve(), cfg.output.resolve())):
        which = "input" if cfg.report.resolve() == cfg.input.resolve() else "output"
        raise UsageError(f"the report would overwrite the {which}", cfg.report, hint="choose another --report")
    out_folder = _is_folder(cfg.output)
    if out_folder and cfg.output.exists() and (not cfg.output.is_dir() or any(cfg.output.iterdir())):
        raise UsageError("the output folder exists and is not empty", cfg.output,
                         hint="choose a new -o folder, or remove this one first")
    if cfg.start is not None and cfg.end is not None and cfg.end <= cfg.start:
        raise UsageError(f"--end {cfg.end} is not after --start {cfg.start}")
    if cfg.input.is_dir():
        if not out_folder:
            raise UsageError("a folder of frames converts to a folder of frames", cfg.output,
                             hint="give -o a folder (making a video from frames needs a frame rate: use ffmpeg)")
        if cfg.start is not None or cfg.end is not None:
            raise UsageError("--start and --end are times in a video; a folder has none", cfg.input,
                             hint="use --max-frames")
        return FolderReader(cfg.input, cfg.max_frames)
    return VideoReader(cfg.input, cfg.start, cfg.end, cfg.max_frames)


def _engine(cfg: VideoConfig) -> tuple[Toonifier, int]:
    """The engine, and how many of its runs go at once: on CPU one per `cfg.threads` physical cores.
    Single-threaded runs side by side beat one run spread over the cores, since the other stages
    stall a multi-threaded run at its every synchronisation (bench/video.py measures both)."""
    threads = cfg.threads or 1
    toonifier = Toonifier(cfg.model, cfg.provider, threads=threads, batch_size=cfg.batch_size)
    return toonifier, max(1, physical_cores() // threads) if toonifier.device == "cpu" else 1


def convert_video(cfg: VideoConfig) -> dict:
    """Toonify a video file or a folder of frames (see the module docstring); returns the report
    (also written to cfg.report when set). cfg.output None: default_output(cfg.input); cfg.model
    None: engine.find_model's default. Raises UsageError, VideoError or ToonifyError for bad input."""
    started = time.perf_counter()
    cfg = replace(cfg, model=find_model(cfg.model), output=cfg.output or default_output(cfg.input))
    source = _open_source(cfg)
    toonifier, workers = _engine(cfg)
    strength_at = strength_ramp(cfg.strength, source.frames_hint)
    toonifier.check_condition(cfg.style, None if cfg.strength is None else list(cfg.strength))
    if toonifier.info.alignment != "ffhq":
        raise UsageError(f"this model converts whole images (alignment {toonifier.info.alignment!r}); video "
                         "conversion follows faces and needs an FFHQ-aligned face model", cfg.model)
    FaceAligner()            # loads dlib's models (~0.6 s, once a process) here, to report it as setup
    setup = time.perf_counter() - started
    tracker, motion, stats = FaceTracker(cfg.detect_every), CropMeasures(slip=cfg.report is not None), FrameStats(measure=cfg.report is not None)
    folder = _is_folder(cfg.output)
    with (
        (atomic_dir(cfg.output) if folder else atomic_path(cfg.output, output_suffix(cfg.output, ".mp4"))) as dest,
        (FolderWriter(dest) if folder else VideoWriter(dest, source, cfg.output, cfg.codec, cfg.crf)) as sink,
        progress("frames") as bar,
    ):
        task = bar.add_task("toonifying", total=source.frames_hint)
        busy = run_stages(smoothed_quads(source, cfg, tracker, motion), toonifier, workers, sink, stats, cfg.crop,
                          lambda: bar.advance(task), cfg.style, strength_at)
        bar.update(task, total=len(stats.faces))     # the hint was an estimate (--start/--end) or unknown
        if not stats.faces:
            trimmed = cfg.start is not None or cfg.end is not None
            raise VideoError("no frames to convert" + (" between --start and --end" if trimmed else ""), cfg.input,
                             hint="check --start/--end against the clip's duration" if trimmed
                             else "the video stream is empty or unreadable")
        sink.finish()
    report = _report(cfg, toonifier, workers, tracker, stats, motion, time.perf_counter() - started, setup, busy)
    if cfg.report is not None:
        write_json_atomic(cfg.report, report)
    console.print(f"{report['frames']} frames, a face in {sum(n > 0 for n in stats.faces)} "
                  f"({max(stats.faces)} at most), {report['seconds']:.1f} s, "
                  f"{report['frames_per_second']:.1f} frames/s -> {escape(printable(str(cfg.output)))}", soft_wrap=True)
    return report


def smoothing_name(cfg: VideoConfig) -> str:
    """What smoothed the crop, as the report says it: 'none' for --sigma 0 (nothing to guide)."""
    if not cfg.live and cfg.sigma == 0:
        return "none (--sigma 0)"
    return (("one-euro (causal)" if cfg.live else f"gaussian sigma={cfg.sigma} frames")
            + (", guided by the face's measured motion" if cfg.guided else ""))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None where either is missing (nothing measured) or b is 0."""
    return a / b if a is not None and b else None


def _report(cfg: VideoConfig, toonifier: Toonifier, workers: int, tracker: FaceTracker, stats: FrameStats,
            motion: CropMeasures, seconds: float, setup: float, busy: dict[str, float]) -> dict:
    before = {**motion.raw.summary(), "slip": motion.raw_slip.summary()}
    after = {**motion.smooth.summary(), "slip": motion.smooth_slip.summary()}
    mean = {k: (float(np.mean(v)) if v else None) for k, v in stats.change.items()}
    return {
        "input": str(cfg.input), "output": str(cfg.output), "model": str(cfg.model),
        "provider": toonifier.provider, "batch_size": toonifier.batch_size, "mode": "crop" if cfg.crop else "paste",
        "inference_runs_at_once": workers, "threads_per_run": cfg.threads or 1,
        "smoothing": smoothing_name(cfg),
        # How often the face's motion came from its pixels, and how often from its landmarks (unreliable
        # pixels); and how far the face moved, as a fraction of the crop side per frame: the crop
        # centre's frame-to-frame change (change_centre below) that following the face takes.
        "face_motion": {**tracker.motion.counts, "per_frame": tracker.motion.per_frame()} if cfg.guided else None,
        "frames": len(stats.faces), "faces_per_frame": stats.faces, "detections": dict(tracker.detections),
        "seconds": round(seconds, 3), "frames_per_second": len(stats.faces) / seconds,
        # Of `seconds`: opening the input and loading the ONNX model and dlib's models.
        "setup_seconds": round(setup, 3),
        # Seconds each kind of work kept its thread busy; they overlap, so they add up to more than `seconds`.
        "busy_seconds": {k: round(v, 3) for k, v in busy.items()},
        # Mean absolute change (0-255) of the face region between consecutive frames: an output
        # that changes much more than its input flickers.
        "face_region_change": {**mean, "output_over_input": ratio(mean["output"], mean["input"])},
        # Crop motion of the alignment, before and after smoothing: the crop's frame-to-frame change
        # (change_*) and its second differences (jitter_*, runtime.tracking.CropMotion), which both
        # count the face's own motion too; and how far the face slides within its crop from frame to
        # frame (slip, measured from pixels, runtime.motion.CropSlip): the crop jitter a viewer sees.
        # smoothing_offset: how far smoothing moved the crop centre (runtime.tracking.CropOffset).
        "crop_motion": {"raw": before, "smoothed": after,
                        "reduction": {k: ratio(before[k], after[k]) for k in before},
                        "smoothing_offset": motion.offset.summary()},
    }
