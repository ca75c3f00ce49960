"""The `toonify-fast` command.

    toonify-fast photo.jpg                 # writes photo_toon.png beside it
    toonify-fast video clip.mp4 -o toon.mp4
    toonify-fast distill --help            # building a model (needs the `distill` extra)

Each command is thin: it parses options and calls one library function. This module must
not import torch or distill at import time (apps embed the runtime without PyTorch).
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

from runtime.common import ToonifyError, console

app = typer.Typer(
    help="Turn faces into cartoon characters in real time with an exported toonify-fast model.\n\n"
         "`toonify-fast IMAGE...` is short for `toonify-fast convert IMAGE...`.",
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]})

@app.callback()
def _group() -> None:
    """Keeps `toonify-fast` a command group whatever commands are registered."""


DISTILL_MISSING = ("`toonify-fast distill` needs the training extra, which is not installed here "
                   "(missing module: {name}).\n  hint: pip install 'toonify-fast[distill]'  (or `make install` in a clone)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def distill(ctx: typer.Context) -> None:
    """Build a model: blend teachers, make pairs, train, evaluate, export (needs the `distill` extra)."""
    try:
        from distill.cli import app as distill_app
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in {"torch", "onnx", "albumentations", "safetensors", "onnxscript"}:
            console.print(DISTILL_MISSING.format(name=e.name))
            raise typer.Exit(2)
        raise
    distill_app(ctx.args, prog_name="toonify-fast distill", standalone_mode=True)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: `toonify-fast IMAGE...` means `toonify-fast convert IMAGE...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        argv.insert(0, "convert")
    try:
        app(argv, prog_name="toonify-fast")
    except ToonifyError as e:
        console.print(f"[red]error:[/red] {e}", markup=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
