"""The `toonify-fast` command: the top of the house. Every entry point (the console script,
`python -m runtime.cli`, `torchrun -m distill`) comes in through `main`; no library imports this.

    toonify-fast photo.jpg                 # writes photo_toon.png beside it
    toonify-fast video clip.mp4 -o toon.mp4
    toonify-fast web model.onnx -o site/ && toonify-fast serve site/   # in the browser
    toonify-fast serve --model model.onnx --port 8000      # an HTTP service: POST /v1/toonify
    toonify-fast distill --help            # building a model (needs the `distill` extra)

Each command is thin: its options are its config's fields (runtime.options), and it calls one
library function. This module must not import torch or distill at import time (apps embed the
runtime without PyTorch): `distill` is loaded only for its own subcommands.
"""
from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from runtime.common import Interrupted, ToonifyError, UsageError, console, note
from runtime.options import command
from runtime.photos import ConvertConfig
from runtime.video import VideoConfig
from runtime.web import ServeConfig, WebConfig

app = typer.Typer(
    help="Turn faces into cartoon characters in real time with an exported toonify-fast model.\n\n"
         "`toonify-fast IMAGE...` is short for `toonify-fast convert IMAGE...`.",
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]})


def _print_version(value: bool) -> None:
    if value:
        from runtime import __version__
        typer.echo(f"toonify-fast {__version__}")
        raise typer.Exit()


@app.callback()
def _group(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                                 callback=_print_version)] = False) -> None:
    """Keeps `toonify-fast` a command group whatever commands are registered."""


DISTILL_EXTRA = ("torch", "onnx", "albumentations", "safetensors")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def distill(ctx: typer.Context) -> None:
    """Build a model: blend teachers, make pairs, train, evaluate, export (needs the `distill` extra)."""
    try:
        # The runtime never needs distill: the subcommand loads it only when asked for, after
        # checking the extra, before any command runs.
        for name in DISTILL_EXTRA:
            importlib.import_module(name)
        distill_app = importlib.import_module("distill.cli").app
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in DISTILL_EXTRA:
            raise UsageError(f"`toonify-fast distill` needs the training extra, which is not installed here "
                             f"(missing module: {e.name})",
                             hint="pip install 'toonify-fast[distill]'  (or `make install` in a clone)") from None
        raise
    distill_app(ctx.args, prog_name="toonify-fast distill", standalone_mode=True)


@command(app, ConvertConfig, arguments=("inputs",))
def convert(cfg: ConvertConfig) -> None:
    """Toonify the faces in photos (`toonify-fast IMAGE...` is short for this).

    Exit status: 0 when every image converted, 1 when some failed, 2 for bad usage.
    """
    from runtime.photos import convert_photos
    s = convert_photos(cfg)
    console.print(f"{'[green]done[/green]' if not s.failed else '[yellow]done[/yellow]'}: {s.converted} converted, "
                  f"{s.failed} failed, {s.faces} face{'s' * (s.faces != 1)}, {s.seconds:.1f} s")
    raise typer.Exit(1 if s.failed else 0)


@app.command()
def info(model: Annotated[Path, typer.Argument(help="An exported model (.onnx).", show_default=False,
                                               metavar="MODEL")]) -> None:
    """Print a model's metadata, the ONNX Runtime providers that would start here, and what auto picks."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from runtime.common import printable
    from runtime.engine import LABELS, ModelError, Toonifier, provider_status, read_model_info
    meta = read_model_info(model).to_metadata()
    # Everything shown comes from the file: as plain text (a name may hold [/x]), control characters escaped.
    table = Table(title=Text(printable(str(model))), show_header=False)
    for key, value in meta.items():
        table.add_row(Text(printable(key)), Text(printable(value)))
    status = provider_status()
    table.add_row("providers that start here", ", ".join(LABELS[p] for p, why in status.items() if not why))
    missing = [f"{LABELS[p]} {why}" for p, why in status.items() if why]
    if missing:
        table.add_row("not here", Text(printable("; ".join(missing))))
    try:
        toonifier = Toonifier(model, "auto")
    except ModelError as e:
        table.add_row("problem", Text(printable(e.reason)))
        Console(soft_wrap=True).print(table)
        raise
    why = toonifier.fallback_reason
    table.add_row("auto runs on", Text(LABELS[toonifier.provider] + (f" ({why})" if why else "")))
    Console(soft_wrap=True).print(table)


@command(app, VideoConfig, arguments=("input",))
def video(cfg: VideoConfig) -> None:
    """Toonify every face in a video or a folder of frames, keeping timing, frame count and audio."""
    from runtime.video import convert_video
    convert_video(cfg)


@command(app, WebConfig, arguments=("model",))
def web(cfg: WebConfig) -> None:
    """Write a static site that converts photos and the webcam in the visitor's browser (serve it with `serve`)."""
    from runtime.web import build_site
    build_site(cfg)


@command(app, ServeConfig, arguments=("folder",))
def serve(cfg: ServeConfig) -> None:
    """Serve the toonify API (--model: POST /v1/toonify, batched across clients), the page of `web` (SITE, with
    COOP/COEP and gzip), or both; /healthz and /metrics. SIGTERM or Ctrl-C finishes requests in flight, then stops."""
    from runtime.server import serve as serve_http
    serve_http(cfg)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: `toonify-fast IMAGE...` means `toonify-fast convert IMAGE...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        argv.insert(0, "convert")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # SIGTERM as Ctrl-C: the work in progress is dropped cleanly (no partial files left behind).
        signal.signal(signal.SIGTERM, _terminated)
    try:
        app(argv, prog_name="toonify-fast")
    except ToonifyError as e:
        note(str(e), "error")
        sys.exit(e.exit_code)
    except SystemExit as e:
        if e.code == Interrupted.exit_code:       # typer's answer to Ctrl-C, which says nothing
            note("interrupted: nothing was written for the work in progress", "error")
        raise


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
