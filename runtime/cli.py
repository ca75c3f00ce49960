"""The `toonify-fast` command.

    toonify-fast photo.jpg                 # writes photo_toon.png beside it
    toonify-fast video clip.mp4 -o toon.mp4
    toonify-fast web model.onnx -o site/ && toonify-fast serve site/   # in the browser
    toonify-fast distill --help            # building a model (needs the `distill` extra)

Each command is thin: it parses options and calls one library function. This module must
not import torch or distill at import time (apps embed the runtime without PyTorch).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from runtime.common import ToonifyError, console
from runtime.images import MAX_PIXELS

app = typer.Typer(
    help="Turn faces into cartoon characters in real time with an exported toonify-fast model.\n\n"
         "`toonify-fast IMAGE...` is short for `toonify-fast convert IMAGE...`.",
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]})

@app.callback()
def _group() -> None:
    """Keeps `toonify-fast` a command group whatever commands are registered."""


DISTILL_EXTRA = ("torch", "onnx", "albumentations", "safetensors")
DISTILL_MISSING = ("`toonify-fast distill` needs the training extra, which is not installed here "
                   "(missing module: {name}).\n  hint: pip install 'toonify-fast[distill]'  (or `make install` in a clone)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def distill(ctx: typer.Context) -> None:
    """Build a model: blend teachers, make pairs, train, evaluate, export (needs the `distill` extra)."""
    try:
        # The runtime never needs distill: the subcommand loads it only when asked for. distill.cli
        # imports its stages lazily, so check the extra here, before any command runs.
        for name in DISTILL_EXTRA:
            importlib.import_module(name)
        distill_app = importlib.import_module("distill.cli").app
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in DISTILL_EXTRA:
            console.print(DISTILL_MISSING.format(name=e.name), markup=False)
            raise typer.Exit(2)
        raise
    distill_app(ctx.args, prog_name="toonify-fast distill", standalone_mode=True)


# Options every converting command shares.
ModelOption = Annotated[Optional[Path], typer.Option(
    "-m", "--model", help="Exported model (.onnx). Default: $TOONIFY_FAST_MODEL, then exports/toonify.onnx.")]
ProviderOption = Annotated[str, typer.Option(
    help="ONNX Runtime provider: auto (TensorRT if TOONIFY_FAST_TENSORRT=1, then CUDA, then CPU), tensorrt, cuda or cpu.")]
BatchOption = Annotated[Optional[int], typer.Option(
    min=1, help="Face crops per model run, across images or frames (default: 1 on CPU, 8 on a GPU).")]


@app.command()
def convert(
    images: Annotated[list[str], typer.Argument(
        metavar="IMAGE", help="Images, folders (their images, sorted) or glob patterns such as 'shots/*.jpg'.",
        show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Output file (one input) or folder. Default: IMAGE_toon.png beside each image.")] = None,
    model: ModelOption = None,
    provider: ProviderOption = "auto",
    batch_size: BatchOption = None,
    max_faces: Annotated[Optional[int], typer.Option(
        min=1, help="Convert at most this many faces per image, largest first (default: all).")] = None,
    crop: Annotated[bool, typer.Option(
        "--crop", help="Write the aligned toon faces (IMAGE_toon_0.png, _1, ...) instead of the whole photo.")] = False,
    no_align: Annotated[bool, typer.Option(
        "--no-align", help="Each image is already an aligned face: resize it to the model resolution, "
                           "convert, resize back.")] = False,
    max_megapixels: Annotated[float, typer.Option(
        min=0.001, help="Refuse images with more pixels than this (decompression bombs).")] = MAX_PIXELS / 1e6,
) -> None:
    """Toonify the faces in photos (`toonify-fast IMAGE...` is short for this).

    Exit status: 0 when every image converted, 1 when some failed, 2 for bad usage.
    """
    from runtime.photos import ConvertConfig, convert_photos
    cfg = ConvertConfig(inputs=tuple(images), output=output, model=model, provider=provider,
                        batch_size=batch_size, max_faces=max_faces, crop=crop, align=not no_align,
                        max_pixels=int(max_megapixels * 1e6))
    s = convert_photos(cfg)
    console.print(f"{'[green]done[/green]' if not s.failed else '[yellow]done[/yellow]'}: {s.converted} converted, "
                  f"{s.failed} failed, {s.faces} face{'s' * (s.faces != 1)}, {s.seconds:.1f} s")
    raise typer.Exit(1 if s.failed else 0)


@app.command()
def info(model: Annotated[Path, typer.Argument(help="An exported model (.onnx).", show_default=False)]) -> None:
    """Print a model's metadata and the ONNX Runtime providers available here."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from runtime.engine import LABELS, Toonifier, available_providers, read_model_info
    meta = read_model_info(model).to_metadata()
    table = Table(title=str(model), show_header=False)
    for key, value in meta.items():
        table.add_row(key, Text(value))
    table.add_row("providers here", ", ".join(LABELS[p] for p in available_providers()))
    toonifier = Toonifier(model, "auto")
    why = toonifier.fallback_reason
    table.add_row("auto runs on", Text(LABELS[toonifier.provider] + (f" ({why})" if why else "")))
    Console(soft_wrap=True).print(table)


@app.command()
def video(
    source: Annotated[Path, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="A video file (any format FFmpeg reads) or a folder of frames (converted in name order).")],
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Output video (.mp4, .mkv, .mov, .webm: the extension picks the container) or "
                               "folder. Default: SOURCE_toon.mp4, or the folder SOURCE_toon for frames.")] = None,
    model: ModelOption = None,
    provider: ProviderOption = "auto",
    batch_size: BatchOption = None,
    start: Annotated[Optional[float], typer.Option(min=0, help="Start this many seconds into the clip.")] = None,
    end: Annotated[Optional[float], typer.Option(min=0, help="Stop this many seconds into the clip.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(min=1, help="Convert at most this many frames.")] = None,
    crop: Annotated[bool, typer.Option(
        "--crop", help="Write only the aligned toon face: a square video at the model resolution.")] = False,
    live: Annotated[bool, typer.Option(
        "--live", help="Smooth the crop with a causal One Euro filter (as a webcam needs) instead of a "
                       "Gaussian over the frames before and after.")] = False,
    sigma: Annotated[float, typer.Option(
        min=0, help="Width of the offline smoothing, in frames (0: none). Wider averages more landmark wobble "
                    "away and holds 3 sigma frames in memory.")] = 6.0,
    guide: Annotated[bool, typer.Option(
        "--guide/--no-guide", help="Let the smoothing follow the face's motion measured from its pixels, so "
                                   "only landmark wobble is averaged away (--no-guide: average the landmarks "
                                   "alone, which lags a moving face).")] = True,
    codec: Annotated[str, typer.Option(help="Video encoder (FFmpeg name).")] = "libx264",
    crf: Annotated[int, typer.Option(
        min=0, max=63, help="Constant rate factor for x264/x265/VPx/AV1: lower is better and bigger.")] = 18,
    report: Annotated[Optional[Path], typer.Option(
        help="Write a JSON report: faces per frame, crop jitter with and without smoothing (how far the "
             "face slides within its crop, and the crop's own motion), face-region change of input and output.")] = None,
) -> None:
    """Toonify every face in a video or a folder of frames, keeping timing, frame count and audio."""
    from runtime.photos import find_model
    from runtime.video import VideoConfig, convert_video, default_output
    convert_video(VideoConfig(source, output or default_output(source), find_model(model), provider=provider,
                              batch_size=batch_size, start=start, end=end, max_frames=max_frames, crop=crop,
                              live=live, sigma=sigma, guided=guide, codec=codec, crf=crf,
                              report=report))


@app.command()
def web(
    model: Annotated[Path, typer.Argument(help="An exported model (.onnx): the site carries a copy.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The site folder to write.")] = Path("site"),
    webgpu: Annotated[bool, typer.Option(
        "--webgpu/--no-webgpu", help="Also ship ONNX Runtime's WebGPU build (fetched only by browsers with WebGPU).")] = True,
) -> None:
    """Write a static site that converts photos and the webcam in the visitor's browser (serve it with `serve`)."""
    from runtime.web import WebConfig, build_site
    build_site(WebConfig(model=model, output=output, webgpu=webgpu))


@app.command()
def serve(
    folder: Annotated[Path, typer.Argument(help="A site written by `toonify-fast web`.")] = Path("site"),
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve a site on localhost with the headers that enable WASM threads (COOP and COEP)."""
    from runtime.web import ServeConfig, serve as serve_site
    serve_site(ServeConfig(folder=folder, port=port, host=host))


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: `toonify-fast IMAGE...` means `toonify-fast convert IMAGE...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        argv.insert(0, "convert")
    try:
        app(argv, prog_name="toonify-fast")
    except ToonifyError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
