"""`toonify-fast distill ...`: the commands that build a model, one per pipeline stage.

    toonify-fast distill blend --base ffhq.pkl --toon cartoon.pkl --swap-res 32 -o blended.safetensors

Each command builds its stage's config and calls one library function.
"""
from __future__ import annotations

import typer

app = typer.Typer(help="Build a toonify-fast model from StyleGAN2 teachers: blend, sample, pairs, "
                       "train, eval, export.", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})


@app.callback()
def _group() -> None:
    """Keeps `toonify-fast distill` a command group whatever commands are registered."""
