"""`toonify-fast distill ...`: the commands that build a model, one per pipeline stage.

    toonify-fast distill blend --base ffhq.pkl --toon cartoon.pkl --swap-res 32 -o blended.safetensors
    torchrun --nproc_per_node 2 -m distill train --pairs pairs/ ...     # the same commands under DDP

Each command's options are its stage config's fields (runtime.options: defaults and help live on
the fields), and it calls one library function. runtime.cli loads this module for `distill`;
nothing below imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distill.align import AlignConfig
from distill.blend import BlendConfig
from distill.demo import DemoConfig
from distill.evaluate import EvalConfig
from distill.export import ExportConfig
from distill.finetune import RESUMABLE as FINETUNE_RESUMABLE
from distill.finetune import FinetuneConfig
from distill.pairs import PairsConfig, SampleConfig
from distill.project import CompareConfig, ProjectConfig
from distill.runs import resumed_config
from distill.train import RESUMABLE, TrainConfig
from runtime.options import command, given

app = typer.Typer(help="Build a toonify-fast model from StyleGAN2 teachers: blend, sample, pairs, "
                       "train, eval, export, align, finetune.", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


@app.callback()
def _group() -> None:
    """Keeps `toonify-fast distill` a command group whatever commands are registered."""


@command(app, BlendConfig)
def blend(cfg: BlendConfig,
          base: Annotated[Path, typer.Option(help="Base (FFHQ) checkpoint: gives the high-resolution blocks (texture).")],
          toon: Annotated[Path, typer.Option(help="Toon fine-tune of the base: gives the low-resolution blocks (structure).")],
          output: Annotated[Path, typer.Option("--output", "-o", help="The blended model to write (.safetensors).")]) -> None:
    """Blend a base model and its toon fine-tune by resolution (Toonify)."""
    from distill.blend import blend_files
    blend_files(base, toon, cfg, output)


@command(app, SampleConfig)
def sample(cfg: SampleConfig) -> None:
    """A grid of the same latents through several generators: rows are networks, columns seeds."""
    from distill.pairs import write_sample_grid
    write_sample_grid(cfg)


@command(app, PairsConfig)
def pairs(cfg: PairsConfig) -> None:
    """Paired (real, toon) images from the same latents: the student's training set."""
    from distill.pairs import generate_pairs
    generate_pairs(cfg)


@command(app, AlignConfig, arguments=("images",))
def align(cfg: AlignConfig) -> None:
    """FFHQ-align the faces of your images for fine-tuning: OUT/STEM_I.png at --res, duplicates skipped.

    Exit status 1 when some image was skipped for another reason than being a duplicate (unreadable,
    no face, not square with --no-align); OUT/align.json says which and why.
    """
    from distill.align import align_folder
    summary = align_folder(cfg)
    typer.echo(cfg.output / "align.json")
    raise typer.Exit(1 if summary.failed else 0)


@command(app, ExportConfig)
def export(cfg: ExportConfig) -> None:
    """Export a student to ONNX (dynamic batch and size, self-describing metadata), checked against PyTorch."""
    from distill.export import export_student
    typer.echo(export_student(cfg)["output"])


@command(app, DemoConfig)
def demo(cfg: DemoConfig) -> None:
    """The whole pipeline on a tiny untrained demo teacher, then `toonify-fast` on a photo (`make demo`)."""
    from distill.demo import run_demo
    paths = run_demo(cfg)
    typer.echo(f"contact sheet: {paths['contact_sheet']}\nconverted photo: {paths['converted']}\n"
               f"student model: {paths['model']}\nevaluation: {paths['eval']}\nteacher grid: {paths['grid']}\n"
               f"next: {own_command()} {paths['photo']}   (or any photo of yours)")


def own_command() -> str:
    """How to call toonify-fast again from here: its path when it is not on PATH (a .venv not activated)."""
    import os
    import shutil
    import sys
    exe, on_path = Path(sys.argv[0]), shutil.which("toonify-fast")
    if exe.name != "toonify-fast" or "/" not in str(exe) or (on_path and Path(on_path).resolve() == exe.resolve()):
        return "toonify-fast"
    return os.path.relpath(exe)


# The two options of every command that makes a resumable run folder (train, finetune).
ResumeOption = Annotated[Optional[Path], typer.Option(
    help="Continue this run folder exactly where it stopped, with its own settings (config.json).")]
StopAtOption = Annotated[Optional[int], typer.Option(
    help="End this session after this step with a checkpoint (continue later with --resume).")]


@command(app, TrainConfig)
def train(cfg: TrainConfig, ctx: typer.Context, resume: ResumeOption = None, stop_at: StopAtOption = None) -> None:
    """Train the pix2pixHD student on pairs (under torchrun: DDP, one process per GPU or CPU share)."""
    from distill.train import train as run_training
    if resume is not None:
        cfg = resumed_config(cfg, resume, given(ctx) - {"resume", "stop_at"}, RESUMABLE)
    result = run_training(cfg, resume=resume, stop_at=stop_at)
    if result.run_dir is not None:
        typer.echo(result.run_dir)


@command(app, FinetuneConfig)
def finetune(cfg: FinetuneConfig, ctx: typer.Context, resume: ResumeOption = None, stop_at: StopAtOption = None) -> None:
    """Fine-tune a StyleGAN2 on aligned faces (NVlabs' StyleGAN2-ADA recipe): the toon model for `distill blend --toon`."""
    from distill.finetune import finetune as run_finetune
    if resume is not None:
        cfg = resumed_config(cfg, resume, given(ctx) - {"resume", "stop_at"}, FINETUNE_RESUMABLE)
    result = run_finetune(cfg, resume=resume, stop_at=stop_at)
    if result.run_dir is not None:
        typer.echo(result.run_dir / "finetuned.safetensors")


@command(app, EvalConfig, name="eval")
def evaluate(cfg: EvalConfig) -> None:
    """PSNR and SSIM (and LPIPS when its weights are local) of a student against the teacher, and of the identity."""
    import json

    from distill.evaluate import evaluate_file
    report = evaluate_file(cfg)
    typer.echo(json.dumps(report, indent=2, sort_keys=True) if cfg.output is None else cfg.output)


@command(app, ProjectConfig, arguments=("images",))
def project(cfg: ProjectConfig) -> None:
    """Toonify by optimisation (the original, slow method): project each photo into the base model, render with the blend.

    Writes NAME_target.png, NAME_projected.png, NAME_toon.png and NAME_w.npy per image, and project.json.
    Exit status 1 when some image was skipped (unreadable, no face).
    """
    from distill.project import project_files
    results = project_files(cfg)
    raise typer.Exit(1 if any("skipped" in r for r in results) else 0)


@command(app, ProjectConfig, name="compare", arguments=("images",))
def compare(cfg: ProjectConfig,
            student: Annotated[Path, typer.Option(help="The exported student (.onnx) to judge.")]) -> None:
    """The student against projection+blend on real photos: side-by-side PNGs and PSNR/SSIM in compare.json.

    Exit status 1 when some image was skipped (unreadable, no face).
    """
    from distill.project import compare_files
    report = compare_files(CompareConfig(student=student, projection=cfg))
    typer.echo(cfg.output / "compare.json")
    raise typer.Exit(1 if any("skipped" in r for r in report["results"]) else 0)
