"""`toonify-fast serve`: one HTTP service for many users (Starlette on uvicorn): the toonify API,
batched across clients before the engine, and the browser page of `toonify-fast web`.

    serve(ServeConfig(model=Path("exports/toonify.onnx"), port=8000))    # POST /v1/toonify
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' localhost:8000/v1/toonify -o toon.png

Endpoints: `POST /v1/toonify` (an image as the body or as a multipart file; query parameters
`crop`, `align`, `max_faces`, `format` (png, jpeg, webp), `style` and `strength` where the model
has them: requests of one style share engine runs, each face at its request's strength) answers
the toon image with the faces found as JSON in the `X-Faces` header, or, for a client that
accepts `application/json` first, one JSON object with the faces and the image in base64;
`GET /healthz`; `GET /metrics` (Prometheus text); the site folder, when given, at `/` with the
cross-origin isolation headers WASM threads need and its precompressed .gz files when the
browser accepts gzip. Every limit answers at once: 503 with Retry-After beyond `queue_limit`
requests in the service, 413 past the upload size, 422 for what the CLI refuses (not an image,
truncated, over the pixel limit, no face) with the CLI's reason, 504 past the time limit. Nothing
is written to disk; on SIGTERM or Ctrl-C requests in flight are finished first, then the
command ends with exit status 0.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import signal
import socket
import time
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from runtime.batching import Batcher, Metrics
from runtime.common import ToonifyError, UsageError, console
from runtime.engine import Toonifier, physical_cores
from runtime.faces import FaceAligner
from runtime.images import decode_image, encode_image, image_grid
from runtime.photos import compose, face_crops
from runtime.web import GZIP_SUFFIXES, ISOLATION_HEADERS, MIME, ServeConfig

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
           "webp": ("WEBP", "image/webp")}
NO_FACE = "no face found"
NO_FACE_HINT = "if the image is already an aligned face, pass align=false"


class Refused(Exception):
    """An answer other than the toon: HTTP status, reason and hint."""

    def __init__(self, status: int, reason: str, hint: str = "", headers: dict | None = None, kind: str = "request"):
        super().__init__(reason)
        self.status, self.reason, self.hint, self.headers, self.kind = status, reason, hint, headers or {}, kind


# The `reason` label of toonify_requests_total: a fixed set (a label per message would grow with
# every image size); the image errors' reasons start with these.
IMAGE_KINDS = (("not an image", "not_an_image"), ("truncated", "truncated"), ("empty", "empty"))


def _image_kind(reason: str) -> str:
    if "over the limit" in reason:
        return "too_many_pixels"
    return next((kind for start, kind in IMAGE_KINDS if reason.startswith(start)), "bad_image")


def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise Refused(422, f"{name} must be true or false, got {value!r}")


def _faces(faces, count: int) -> list[dict]:
    if faces is None:
        return [{"whole_image": True}]
    return [{"box": list(f.box), "quad": np.round(f.quad.astype(np.float64), 2).tolist()} for f in faces[:count]]


def _wants_json(accept: str) -> bool:
    """Whether the Accept header puts application/json before any image type (browsers' fetch
    sends */*, which keeps the image)."""
    for part in accept.split(","):
        kind = part.split(";")[0].strip().lower()
        if kind == "application/json":
            return True
        if kind.startswith("image/") or kind == "*/*":
            return False
    return False


class Service:
    """The API's state: the engine with its batcher, the threads for decoding and detection, metrics."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.toonifier = None
        if cfg.model is not None:
            threads = max(1, physical_cores() // cfg.workers)
            self.toonifier = Toonifier(cfg.model, cfg.provider, threads=threads, batch_size=cfg.max_batch)
            self.aligner = FaceAligner() if self.toonifier.info.alignment == "ffhq" else None
        # Decoding, detection, paste-back and encoding: off the event loop, one thread a core.
        self.prep = concurrent.futures.ThreadPoolExecutor(physical_cores(), thread_name_prefix="prep")
        self.batcher: Batcher | None = None

    async def start(self) -> None:
        if self.toonifier is not None:
            self.batcher = Batcher(self.toonifier.run, self.cfg.max_batch, self.cfg.max_wait_ms / 1000,
                                   self.cfg.workers, self.metrics)
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.prep.shutdown(wait=True)

    async def _in_prep(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.prep, fn, *args)

    async def toonify(self, request: Request) -> Response:
        start = time.perf_counter()
        if self.batcher is None:
            return self._answer(Refused(404, "this service has no model", "start it with --model M.onnx", kind="no_model"), None)
        if self.metrics.in_service >= self.cfg.queue_limit:
            return self._answer(Refused(503, "busy: too many requests in the service", "retry after a second",
                                        {"Retry-After": "1"}, "busy"), None)
        self.metrics.in_service += 1
        try:
            response = await asyncio.wait_for(self._toonify(request), self.cfg.timeout)
            self.metrics.answered(200, "ok", time.perf_counter() - start)
            return response
        except asyncio.TimeoutError:
            return self._answer(Refused(504, f"not done within {self.cfg.timeout:g} s", "retry later", kind="timeout"), start)
        except Refused as e:
            return self._answer(e, start)
        except ToonifyError as e:
            return self._answer(Refused(422, e.reason, e.hint, kind=_image_kind(e.reason)), start)
        except ClientDisconnect:
            return self._answer(Refused(499, "the client went away", kind="client_gone"), start)
        finally:
            self.metrics.in_service -= 1

    def _answer(self, e: Refused, start: float | None) -> Response:
        self.metrics.answered(e.status, e.kind, None if start is None else time.perf_counter() - start)
        body = {"error": e.reason, **({"hint": e.hint} if e.hint else {})}
        return JSONResponse(body, e.status, headers=e.headers)

    async def _toonify(self, request: Request) -> Response:
        q = request.query_params
        crop = _flag(q.get("crop"), "crop", False)
        aligned = _flag(q.get("align"), "align", True)
        fmt = q.get("format", "png").lower()
        if fmt not in FORMATS:
            raise Refused(422, f"unknown format {fmt!r}", "choose png, jpeg or webp")
        max_faces = self.cfg.max_faces
        if "max_faces" in q:
            if not q["max_faces"].isdigit() or int(q["max_faces"]) < 1:
                raise Refused(422, f"max_faces must be a positive whole number, got {q['max_faces']!r}")
            max_faces = min(int(q["max_faces"]), max_faces or int(q["max_faces"]))
        style, strength = self._condition(q.get("style"), q.get("strength"))
        data = await self._upload(request)
        rgb, alpha = await self._in_prep(decode_image, data, self.cfg.max_pixels)
        aligner = self.aligner if aligned else None
        faces, crops = await self._in_prep(face_crops, aligner, rgb, self.toonifier.resolution, max_faces)
        if not crops:
            raise Refused(422, NO_FACE, NO_FACE_HINT, kind="no_face")
        toons = await self.batcher.submit(crops, style, strength)
        pil_format, media = FORMATS[fmt]
        if crop:
            image = await self._in_prep(lambda: encode_image(image_grid([list(toons)]), None, pil_format))
        else:
            image = await self._in_prep(lambda: encode_image(compose(rgb, faces, list(toons)), alpha, pil_format))
        found = _faces(faces, len(crops))
        if _wants_json(request.headers.get("accept", "")):
            return JSONResponse({"faces": found, "media_type": media, "image": base64.b64encode(image).decode()})
        return Response(image, media_type=media, headers={"X-Faces": json.dumps(found)})

    def _condition(self, style: str | None, strength: str | None) -> tuple[str | None, float]:
        """(style, strength) for the batcher: a conditioned model's (its first style and default
        strength where not given), (None, 1.0) for a one-input model, which takes at most the
        style and strength folded into it; 422 with the engine's reason otherwise."""
        value = None
        if strength is not None:
            try:
                value = float(strength)
            except ValueError:
                raise Refused(422, f"strength must be a number in [0, 1], got {strength!r}") from None
        try:
            self.toonifier.check_condition(style, value)
        except ToonifyError as e:
            raise Refused(422, e.reason, e.hint) from None
        if not self.toonifier.styles:
            return None, 1.0
        return style or self.toonifier.styles[0], self.toonifier.info.default_strength if value is None else value

    async def _upload(self, request: Request) -> bytes:
        """The image bytes: the body, or the first file of a multipart form; 413 past max_upload."""
        limit = self.cfg.max_upload
        too_big = Refused(413, f"upload larger than {limit / 1e6:g} MB", "downscale the image (or raise --max-upload-mb)",
                          kind="too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        body = b"".join(chunks)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return body
        # The body is read already (and bounded); the form parser reads it again from memory.
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16, max_part_size=limit)
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise Refused(422, "the form has no file", "send the image as the body or as a multipart file field")
        return await files[0].read()

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": str(self.cfg.model) if self.cfg.model else None,
                             "provider": self.toonifier.provider if self.toonifier else None})

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.text(), media_type="text/plain; version=0.0.4")


class SiteFiles(StaticFiles):
    """The site's files with their MIME types, isolation headers, and the .gz beside a file sent
    gzip-encoded when the browser accepts it (`toonify-fast web` writes them)."""

    async def get_response(self, path: str, scope) -> Response:
        gzipped = "gzip" in Headers(scope=scope).get("accept-encoding", "")
        response = None
        if gzipped and Path(path).suffix in GZIP_SUFFIXES:
            try:
                response = await super().get_response(path + ".gz", scope)
                response.headers["Content-Encoding"] = "gzip"
            except HTTPException:
                response = None
        if response is None:
            response = await super().get_response(path, scope)
        mime = MIME.get(Path(path).suffix)
        if mime and response.status_code == 200:
            response.headers["Content-Type"] = mime
        response.headers["Vary"] = "Accept-Encoding"
        response.headers["Cache-Control"] = "no-cache"
        response.headers.update(ISOLATION_HEADERS)
        return response


def make_app(cfg: ServeConfig) -> Starlette:
    """The ASGI app for `cfg` (the model, the site, or both); raises UsageError for neither or a bad site."""
    if cfg.model is None and cfg.folder is None:
        raise UsageError("nothing to serve", hint="give a site folder (toonify-fast web ...), --model M.onnx, or both")
    folder = Path(cfg.folder) if cfg.folder is not None else None
    if folder is not None and not (folder / "index.html").is_file():
        raise UsageError("not a site folder (no index.html)", folder,
                         hint="build one with `toonify-fast web MODEL.onnx -o FOLDER`")
    service = Service(cfg)
    routes = [Route("/v1/toonify", service.toonify, methods=["POST"]),
              Route("/healthz", service.healthz), Route("/metrics", service.metrics_text)]
    if folder is not None:
        routes.append(Mount("/", SiteFiles(directory=folder, html=True)))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    return app


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (port 0: a free one); UsageError when the address is taken."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=2048)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e})", hint="choose another --port") from None
    return sock


def serve(cfg: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C (requests in flight are answered first), printing the URL on
    stdout first (a script can read the port)."""
    import uvicorn
    app = make_app(cfg)
    sock = listen(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    print(f"http://{host}:{port}/", flush=True)
    parts = ([f"POST /v1/toonify ({cfg.model})"] if cfg.model else []) + ([f"{cfg.folder}/ at /"] if cfg.folder else [])
    console.print(f"serving {', '.join(parts)} (Ctrl-C stops)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(cfg.timeout) + 1)
    # uvicorn answers SIGTERM and Ctrl-C by finishing the requests in flight, then raises the
    # signal again for the handlers it found: these note it, so that a stop asked for ends as a
    # success (exit status 0, what service managers expect) rather than as interrupted work.
    stopped_by = []
    previous = {sig: signal.signal(sig, lambda sig, frame: stopped_by.append(sig)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped_by:
        console.print(f"stopped ({signal.Signals(stopped_by[0]).name}): the requests in flight were answered")


def free_ports(count: int) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 now (for a server started next: Triton, tests, benches)."""
    import socket
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
