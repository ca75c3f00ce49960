"""Frames in and out: video files through FFmpeg (PyAV) with their timestamps and audio kept,
and folders of image files.

    for frame in VideoReader(Path("clip.mp4")).frames(): ...     # Frame(index, image, pts)

VideoWriter encodes in the input's time base, so every timestamp (variable frame rate included)
is kept, and copies the audio packet for packet, interleaved by time so nothing piles up.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from runtime.common import (UMASK, WRITE_ERRNOS, ToonifyError, UsageError, note, partial_prefix,
                            remove_stale_partials, write_error)
from runtime.images import IMAGE_SUFFIXES, ImageError, list_images, natural_key, read_image, write_image

# A video stream ending this many seconds before the header's duration is cut short, not just
# shorter than its audio.
TRUNCATED_BY = 1.0
CRF_CODECS = {"libx264", "libx265", "libvpx", "libvpx-vp9", "libaom-av1", "libsvtav1"}
# x264/x265's "medium" costs several times the CPU of "veryfast" for a slightly smaller file at
# the same crf, and that CPU is taken from the model running beside the encoder. For x264,
# "superfast" with veryfast's macroblock tree and 10-frame lookahead put back keeps most of
# veryfast's compression for much less CPU (bench/video.py measures the whole path).
ENCODER_OPTIONS = {"libx264": {"preset": "superfast", "x264-params": "mbtree=1:rc-lookahead=10"},
                   "libx265": {"preset": "veryfast"}}


class VideoError(ToonifyError):
    """A video or frame folder that cannot be converted as asked."""


@dataclass
class Frame:
    index: int                      # 0, 1, ... among the frames read
    image: np.ndarray               # [H, W, 3] uint8 RGB
    pts: int = 0                    # in the video stream's time base
    name: str = ""                  # file name, for folders
    alpha: np.ndarray | None = None # [H, W] uint8, from images that have one
    faces: int = 0                  # faces found on it (set by the converter)


class VideoReader:
    """The frames of a video file's first video stream: from `start` to `end` seconds (counted
    from the start of the clip), at most `max_frames`. Each frames() call is a new pass."""

    def __init__(self, path: Path, start: float | None = None, end: float | None = None,
                 max_frames: int | None = None):
        # With a start, the output's timestamps (video and audio alike) shift so that it begins at 0.
        self.path, self.max_frames, self.shifted = path, max_frames, start is not None
        with self.open() as c:
            if not c.streams.video:
                raise VideoError("has no video stream", path,
                                 hint="FFmpeg finds no video in it: an audio-only or empty file?")
            s = c.streams.video[0]
            self.time_base, self.rate = s.time_base, s.average_rate or s.guessed_rate or 30
            self.has_audio = bool(c.streams.audio)
            origin = c.start_time / av.time_base if c.start_time is not None else 0.0
            self.duration = c.duration / av.time_base if c.duration else None   # all streams, as the header says
            whole = start is None and end is None
            self.frames_hint = min(filter(None, [s.frames if whole else self._estimate(c, s, start, end),
                                                 max_frames]), default=None)
        # Seconds on the input's own clock.
        self.first = origin + (start or 0.0)
        self.last = origin + end if end is not None else math.inf
        self.limited = False        # True once max_frames stopped a pass before the end of the stream

    def _estimate(self, container, stream, start: float | None, end: float | None) -> int | None:
        """About how many frames lie between start and end (from the duration and the frame rate), for
        the progress bar; None when the duration is unknown."""
        # On the input's clock, as first/last are: the video stream may begin after the container.
        origin = container.start_time / av.time_base if container.start_time is not None else 0.0
        begins = float(stream.start_time * stream.time_base) if stream.start_time is not None else origin
        if stream.duration:
            ends = begins + float(stream.duration * stream.time_base)
        elif container.duration:
            ends = origin + container.duration / av.time_base
        else:
            return None
        seconds = min(origin + end if end is not None else ends, ends) - max(origin + (start or 0.0), begins)
        return max(round(seconds * float(self.rate)), 0) or None

    def open(self):
        try:
            return av.open(str(self.path))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"not a video FFmpeg can read ({getattr(e, 'strerror', None) or e})", self.path,
                             hint="check that the file is a complete video (mp4, mkv, mov, webm, avi, ...)") from None

    def frames(self) -> Iterator[Frame]:
        index, pts, t = 0, None, None
        with self.open() as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            if self.shifted:
                c.seek(int(self.first * av.time_base))    # lands on the keyframe before `first`
            step = max(1, round(1 / (self.rate * self.time_base)))
            try:
                for f in c.decode(s):
                    pts = f.pts if f.pts is not None else (0 if pts is None else pts + step)
                    t = float(pts * self.time_base)
                    if t < self.first - 1e-6:
                        continue
                    if t >= self.last:
                        return
                    if index == self.max_frames:
                        self.limited = True
                        return
                    yield Frame(index, upright(f.to_ndarray(format="rgb24"), f.rotation), pts)
                    index += 1
            except av.FFmpegError as e:
                note(f"{self.path}: the video stream is corrupt after frame {index} ({e.strerror or e})"
                     + (f"; converting the {index} frames before it" if index else ""), "warning")
                return
            if not self.shifted and self.last == math.inf and index < s.frames:
                # Frame threading hides the decoder's error at a cut: the stream just ends early.
                note(f"{self.path}: the video stream ends after {index} of the {s.frames} frames its header "
                     f"announces (a truncated file?); converting those {index}", "warning")
            elif (not self.shifted and self.last == math.inf and not s.frames and self.duration and t is not None
                  and t < self.first + self.duration - TRUNCATED_BY):
                # Matroska and WebM announce no frame count, only a duration.
                note(f"{self.path}: the video stream ends at {t - self.first:.2f} s of the {self.duration:.2f} s its "
                     f"header announces (a truncated file?); converting the {index} frames before", "warning")


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded [H, W, 3] frame as it is shown: `rotation` is the stream's display rotation in
    degrees counter-clockwise (PyAV's VideoFrame.rotation; -90 for a phone held upright)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


class FolderReader:
    """The image files of a folder in name order (frame_2 before frame_10); other entries are
    skipped with a warning naming them."""
    rate, has_audio, limited = None, False, False

    def __init__(self, folder: Path, max_frames: int | None = None):
        self.path = folder
        self.paths, others = list_images(folder, key=natural_key)
        if not self.paths:
            raise VideoError("no image files in this folder", folder,
                             hint=f"frames are {', '.join(IMAGE_SUFFIXES)} files, read in name order")
        if others:
            names = [p.name for p in others]
            note(f"{folder}: skipping {len(names)} entries that are not images: " + ", ".join(names[:8])
                 + (", ..." if len(names) > 8 else ""), "warning")
        self.paths = self.paths[:max_frames]
        self.frames_hint, self.unreadable = len(self.paths), set()

    def frames(self) -> Iterator[Frame]:
        index, size = 0, None
        for path in self.paths:
            if path in self.unreadable:
                continue
            try:
                rgb, alpha = read_image(path)
            except ImageError as e:
                note(f"skipped {e}", "warning")
                self.unreadable.add(path)
                continue
            # Faces are followed from frame to frame, so every frame must have the first one's size.
            size = size or rgb.shape[:2]
            if rgb.shape[:2] != size:
                note(f"skipped {path}: {rgb.shape[1]}x{rgb.shape[0]}, not the {size[1]}x{size[0]} of the first "
                     "frame", "warning")
                self.unreadable.add(path)
                continue
            yield Frame(index, rgb, name=path.name, alpha=alpha)
            index += 1


class VideoWriter:
    """Encodes RGB frames with the reader's timestamps into `path` (container from its extension),
    with the reader's first audio stream copied, or re-encoded where the container cannot hold
    its codec. `output` is the name to show in messages (path is usually a temporary file)."""

    def __init__(self, path: Path, reader: VideoReader, output: Path, codec: str = "libx264", crf: int = 18):
        self.reader, self.output, self.codec, self.crf = reader, output, codec, crf
        try:
            self.out = av.open(str(path), "w")
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot write a video with this extension ({e})", output,
                             hint="use .mp4, .mkv, .mov or .webm, or a folder for frames") from None
        self.video = self.audio = self.audio_in = None
        self.shift = round(reader.first / reader.time_base) if reader.shifted else 0
        self.last_pts = -math.inf

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for container in (self.out, self.audio_in):
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()

    def _open(self, height: int, width: int) -> None:
        try:
            codec = av.Codec(self.codec, "w")
        except (av.FFmpegError, ValueError):
            raise UsageError(f"unknown video encoder {self.codec!r}",
                             hint="try libx264 (the default), libx265, libvpx-vp9 or mpeg4") from None
        formats = [f.name for f in codec.video_formats or []]
        # 4:2:0 chroma (what players expect) halves both dimensions, so they must be even.
        yuv420 = not formats or "yuv420p" in formats
        self.pad = (height % 2, width % 2) if yuv420 else (0, 0)
        if any(self.pad):
            note(f"{self.reader.path}: {width}x{height} frames; {codec.name} needs even sizes, so the output is "
                 f"{width + self.pad[1]}x{height + self.pad[0]} (the last row/column repeated)")
        options = {"crf": str(self.crf)} if codec.name in CRF_CODECS else {}
        options.update(ENCODER_OPTIONS.get(codec.name, {}))
        try:
            self.video = self.out.add_stream(codec.name, rate=self.reader.rate, options=options)
        except ValueError as e:
            raise UsageError(str(e), self.output, hint="pick a --codec the container holds: libx264 for "
                             ".mp4/.mkv/.mov, libvpx-vp9 for .webm") from None
        if codec.name == "libx264":
            # One thread: the pipeline keeps every core busy already, and x264's frame threads
            # spend more CPU on the same frames.
            self.video.codec_context.thread_count = 1
        self.video.width, self.video.height = width + self.pad[1], height + self.pad[0]
        self.video.pix_fmt = "yuv420p" if yuv420 else formats[0]
        self.video.codec_context.time_base = self.video.time_base = self.reader.time_base
        if self.reader.has_audio:
            self._open_audio()

    def _open_audio(self) -> None:
        self.audio_in = self.reader.open()
        src = self.audio_in.streams.audio[0]
        self.copy = src.codec_context.name in self.out.supported_codecs
        if self.copy:
            self.audio = self.out.add_stream_from_template(src)
        else:
            codec = av.Codec(self.out.default_audio_codec, "w")
            rate = src.rate if not codec.audio_rates or src.rate in codec.audio_rates else max(codec.audio_rates)
            self.audio = self.out.add_stream(codec.name, rate=rate)
            note(f"{self.output.suffix} files cannot hold {src.codec_context.name} audio: re-encoding it as {codec.name}")
        if self.reader.shifted:
            self.audio_in.seek(int(self.reader.first * av.time_base))
        self.audio_shift = round(self.reader.first / src.time_base) if self.reader.shifted else 0
        self.packets, self.pending = self.audio_in.demux(src), None

    def _copy_audio(self, until: float) -> None:
        """Mux the audio packets that start before `until` seconds (on the input's clock)."""
        try:
            while self.audio is not None:
                p = self.pending or next(self.packets, None)
                self.pending = None
                if p is None:
                    self.packets = iter(())        # all read; a re-encoder still needs its flush
                    return
                if p.dts is None:                  # the demuxer's empty end-of-stream packet
                    continue
                t = float((p.pts if p.pts is not None else p.dts) * p.time_base)
                if t >= until:
                    self.pending = p
                    return
                if self.reader.shifted and t < self.reader.first - 1e-6:
                    continue
                if self.copy:
                    p.pts = None if p.pts is None else p.pts - self.audio_shift
                    p.dts -= self.audio_shift
                    p.stream = self.audio
                    self.out.mux(p)
                else:
                    for frame in p.decode():
                        frame.pts = None           # the encoder numbers the samples from the start
                        self.out.mux(self.audio.encode(frame))
        except av.FFmpegError as e:
            raise VideoError(f"the audio stream is truncated or corrupt ({e.strerror or e})", self.reader.path,
                             hint="`--max-frames` or `--end` can stop before the damage") from None

    def write(self, frame: Frame, image: np.ndarray, alpha: np.ndarray | None = None) -> None:
        """Encode one [H, W, 3] uint8 RGB frame at the input frame's timestamp (video has no alpha)."""
        if self.video is None:
            self._open(*image.shape[:2])
        self.last_time = float(frame.pts * self.reader.time_base)
        self._copy_audio(until=self.last_time)
        if any(self.pad):
            image = np.pad(image, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        # Encoders and muxers need increasing timestamps; a broken input may repeat one: nudge it a tick.
        out.pts, out.time_base = max(frame.pts - self.shift, self.last_pts + 1), self.reader.time_base
        self.last_pts = out.pts
        with self._writing():
            self.out.mux(self.video.encode(out))

    def finish(self) -> None:
        """Flush the encoder and copy the audio up to where the video stops (all of it when whole)."""
        with self._writing():
            self.out.mux(self.video.encode(None))
            self._copy_audio(self.last_time + float(1 / self.reader.rate) if self.reader.limited
                             else self.reader.last)
            if self.audio is not None and not self.copy:
                self.out.mux(self.audio.encode(None))
            self.out.close()

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except av.FFmpegError as e:       # a full disk, a vanished folder, an encoder refusing the frames
            raise VideoError(f"cannot write the video ({e.strerror or e})", self.output,
                             hint="check the disk space and the folder, or try another --codec") from None


class FolderWriter:
    """Frames written as image files into `folder`, each under its input name (000000.png, ...
    for frames from a video)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def write(self, frame: Frame, image: np.ndarray, alpha: np.ndarray | None = None) -> None:
        write_image(self.folder / (frame.name or f"{frame.index:06d}.png"), image, alpha)

    def finish(self) -> None:
        pass


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a new folder beside `dest`; it becomes `dest` in one rename only if the block succeeds.
    `dest` must not exist or be an empty folder (the caller checks before starting work)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(dest.parent, dest.name)
        tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(dest.name), dir=dest.parent))
    except OSError as e:
        raise write_error(e, dest) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)   # mkdtemp made it private
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise write_error(e, dest) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_y4m(source: Path, dest: Path, start: int = 0, count: int | None = None) -> Path:
    """Frames start .. start+count of a video as a YUV4MPEG2 file (yuv420p): what Chromium's fake
    camera plays (`--use-file-for-fake-video-capture`), for trying the browser page on a clip."""
    with av.open(str(source)) as container, open(dest, "wb") as out:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 0:
                out.write(f"YUV4MPEG2 W{frame.width} H{frame.height} F30000:1001 Ip A1:1 C420jpeg\n".encode())
            if count is not None and i >= start + count:
                break
            if i >= start:
                out.write(b"FRAME\n" + frame.reformat(format="yuv420p").to_ndarray().tobytes())
    return dest
