"""`toonify-fast distill ...`: the commands that build a model, one per pipeline stage.

    toonify-fast distill blend --base ffhq.pkl --toon cartoon.pkl --swap-res 32 -o blended.safetensors

Each command builds its stage's config and calls one library function.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Build a toonify-fast model from StyleGAN2 teachers: blend, sample, pairs, "
                       "train, eval, export, align.", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})


@app.callback()
def _group() -> None:
    """Keeps `toonify-fast distill` a command group whatever commands are registered."""


# ---- blend, sample, pairs: distill/blend.py and distill/pairs.py ----

@app.command()
def blend(
    base: Annotated[Path, typer.Option(help="Base (FFHQ) checkpoint: gives the high-resolution blocks (texture).")],
    toon: Annotated[Path, typer.Option(help="Toon fine-tune of the base: gives the low-resolution blocks (structure).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The blended model to write (.safetensors).")],
    swap_res: Annotated[int, typer.Option(help="Blocks at this resolution and below come from the toon model.")] = 32,
    width: Annotated[Optional[float], typer.Option(
        help="Smooth swap: logistic ramp of this width, in blocks, around swap-res (default: hard swap).")] = None,
    weights: Annotated[Optional[str], typer.Option(
        help="Explicit base share per block, b4 first, e.g. 0,0,0,0.5,1,1 (replaces --swap-res).")] = None,
    mapping: Annotated[str, typer.Option(
        help="Mapping network, w_avg and noise constants from 'base' (keeps pairs aligned) or 'toon'.")] = "base",
) -> None:
    """Blend a base model and its toon fine-tune by resolution (Toonify)."""
    from distill.blend import BlendConfig, blend_files, parse_block_weights
    cfg = BlendConfig(swap_res=swap_res, width=width, mapping_from=mapping,
                      weights=parse_block_weights(weights) if weights is not None else None)
    blend_files(base, toon, cfg, output)


@app.command()
def sample(
    network: Annotated[list[Path], typer.Option(
        help="A generator checkpoint, one grid row; repeat for more rows. w comes from the first one's mapping.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The grid to write (.png).")],
    seeds: Annotated[str, typer.Option(help="One column per seed: 0-7, 1,5,9 or 0-3,10.")] = "0-7",
    psi: Annotated[float, typer.Option(help="Truncation towards the first network's average w.")] = 0.7,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1, ...")] = "auto",
) -> None:
    """A grid of the same latents through several generators: rows are networks, columns seeds."""
    from distill.pairs import parse_seeds, write_sample_grid
    write_sample_grid(network, parse_seeds(seeds), psi, output, device)


@app.command()
def pairs(
    base: Annotated[Path, typer.Option(help="Base (FFHQ) checkpoint: the real images and the mapping network.")],
    blended: Annotated[Path, typer.Option(help="Blended checkpoint from `distill blend`: the toon images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder of the pair set (made or completed).")],
    count: Annotated[int, typer.Option(help="Number of training pairs (indices 0 .. count-1).")],
    res: Annotated[Optional[int], typer.Option(
        help="Side of the written images, Lanczos-resized (default: the teachers' resolution).")] = None,
    psi: Annotated[float, typer.Option(help="Truncation towards the base model's average w.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Seed of the set: pair i depends on (seed, i) only.")] = 0,
    noise: Annotated[str, typer.Option(
        help="const (stored noise), random (drawn per pair, the same for both teachers) or none.")] = "const",
    fmt: Annotated[str, typer.Option("--format", help="png, or jpg (quality 95).")] = "png",
    batch_size: Annotated[int, typer.Option(help="Pairs per forward pass on CUDA (CPU runs one at a time).")] = 8,
    shard: Annotated[Optional[str], typer.Option(
        help="Make only the indices i % n == k of the set, as k/n (default: torchrun's RANK/WORLD_SIZE).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1, ...")] = "auto",
    fp16: Annotated[bool, typer.Option(help="Run the teachers in float16 (CUDA only).")] = False,
    val_count: Annotated[int, typer.Option(help="Held-out pairs written to OUTPUT/val (indices after the training ones).")] = 0,
    save_latents: Annotated[bool, typer.Option(help="Also save each pair's w+ as latents/INDEX.npy.")] = False,
    style_mixing: Annotated[float, typer.Option(
        help="Probability that a pair's w+ switches to a second latent at a random layer.")] = 0.0,
) -> None:
    """Paired (real, toon) images from the same latents: the student's training set."""
    from distill.pairs import PairsConfig, generate_pairs, resolve_shard
    generate_pairs(PairsConfig(base=base, blended=blended, out=output, count=count, res=res, psi=psi, seed=seed,
                               noise=noise, format=fmt, batch_size=batch_size, shard=resolve_shard(shard),
                               device=device, fp16=fp16, val_count=val_count, save_latents=save_latents,
                               style_mixing=style_mixing))


# ---- align: distill/align.py (a fine-tuning set from your own images) ----

@app.command()
def align(
    images: Annotated[list[str], typer.Argument(
        metavar="IMAGE", show_default=False, help="Images, folders or glob patterns: every face found is written.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the aligned images and align.json.")],
    res: Annotated[int, typer.Option(help="Side of the written images: the generator's resolution (1024 for FFHQ).")],
    no_align: Annotated[bool, typer.Option(
        "--no-align", help="Each image is already an aligned, square face: only resize it (cartoon faces "
                           "often defeat the photo face detector).")] = False,
    mirror: Annotated[bool, typer.Option("--mirror", help="Also write each crop flipped left-right.")] = False,
    max_faces: Annotated[Optional[int], typer.Option(help="At most this many faces per image, largest first.")] = None,
) -> None:
    """FFHQ-align the faces of your images for fine-tuning: OUT/STEM_I.png at --res, duplicates skipped.

    Exit status 1 when some image was skipped for another reason than being a duplicate (unreadable,
    no face, not square with --no-align); OUT/align.json says which and why.
    """
    from distill.align import AlignConfig, align_folder
    from runtime.photos import expand_inputs
    summary = align_folder(AlignConfig(images=tuple(expand_inputs(images)), out=output, res=res, align=not no_align,
                                       mirror=mirror, max_faces=max_faces))
    typer.echo(output / "align.json")
    raise typer.Exit(1 if summary.failed else 0)


# ---- export: distill/export.py ----

@app.command()
def export(
    student: Annotated[Path, typer.Option(help="Student weights from `distill train` (RUN/student-ema.pt or student.pt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The ONNX model to write, e.g. exports/toonify.onnx.")],
    fp16: Annotated[bool, typer.Option(help="float16 weights and arithmetic (float32 inputs and outputs); for GPUs.")] = False,
    int8: Annotated[bool, typer.Option(
        help="Static int8 (float32 inputs and outputs) for CPUs: about 2x the float32 speed where the CPU has "
             "VNNI. Needs --calibration; refused when its PSNR against float32 falls below 30 dB.")] = False,
    calibration: Annotated[Optional[list[Path]], typer.Option(
        help="int8: images to calibrate on, repeatable: files, folders, or the pair folder the student was "
             "trained on (its real/ side). Every 5th is held out to check quality.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    triton: Annotated[Optional[Path], typer.Option(
        help="Also write a Triton Inference Server model repository here (NAME/config.pbtxt, NAME/1/model.onnx).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Triton's max_batch_size for dynamic batching.")] = 8,
    parity_image: Annotated[Optional[list[Path]], typer.Option(
        help="A real photo for the ONNX Runtime vs PyTorch parity check; repeatable (default: a bundled portrait).")] = None,
) -> None:
    """Export a student to ONNX (dynamic batch and size, self-describing metadata), checked against PyTorch."""
    from distill.export import ExportConfig, export_student
    report = export_student(ExportConfig(student=student, output=output, fp16=fp16, int8=int8,
                                         calibration=tuple(calibration or ()), opset=opset, triton=triton,
                                         max_batch_size=max_batch_size, parity_images=tuple(parity_image or ())))
    typer.echo(report["output"])


# ---- demo: distill/demo.py ----

@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's teachers, pairs, run and contact sheet.")] = Path("demo"),
    model: Annotated[Path, typer.Option(help="Where to export the demo student.")] = Path("exports/demo.onnx"),
    image: Annotated[Optional[Path], typer.Option(
        help="A photo to convert at the end (default: a public-domain portrait bundled with scikit-image).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps of the student.")] = 600,
    pairs: Annotated[int, typer.Option(help="Training pairs to render.")] = 384,
) -> None:
    """The whole pipeline on a tiny untrained demo teacher, then `toonify-fast` on a photo (`make demo`)."""
    from distill.demo import DemoConfig, run_demo
    paths = run_demo(DemoConfig(out=out, model=model, image=image, steps=steps, pairs=pairs))
    typer.echo(f"contact sheet: {paths['contact_sheet']}\nconverted photo: {paths['converted']}\n"
               f"student model: {paths['model']}\nevaluation: {paths['eval']}\nteacher grid: {paths['grid']}")


# ---- train, eval: distill/train.py and distill/evaluate.py ----

# Options that change nothing a run computes: the only ones --resume accepts (with --stop-at).
_SESSION_OPTIONS = {"workers", "device", "log_every", "sample_every", "checkpoint_every"}


@app.command()
def train(
    ctx: typer.Context,
    pairs: Annotated[Optional[Path], typer.Option(
        help="Pair folder from `distill pairs` (its val/ split feeds the sample grids). Needed unless --resume.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where numbered run folders are made.")] = Path("runs"),
    preset: Annotated[str, typer.Option(help="Student architecture: lite or full (pix2pixHD's default).")] = "lite",
    res: Annotated[int, typer.Option(help="Training resolution; pairs are resized to it.")] = 256,
    steps: Annotated[int, typer.Option(help="Training steps (one global batch each).")] = 20000,
    batch_size: Annotated[int, typer.Option(help="Images per step per process.")] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate of both networks (betas 0.5, 0.999).")] = 2e-4,
    decay_start: Annotated[float, typer.Option(
        help="Fraction of the steps at constant LR before the linear decay to 0.")] = 0.5,
    gan: Annotated[bool, typer.Option("--gan/--no-gan", help="Adversarial and feature-matching terms.")] = True,
    gan_mode: Annotated[str, typer.Option(help="lsgan or hinge.")] = "lsgan",
    feat_weight: Annotated[float, typer.Option(
        help="Feature-matching weight on the mean over layers and scales (40 = pix2pixHD's 10).")] = 40.0,
    vgg: Annotated[bool, typer.Option("--vgg/--no-vgg", help="VGG19 perceptual term (needs real weights).")] = True,
    vgg_weights: Annotated[Optional[Path], typer.Option(
        help="torchvision's vgg19 state dict (vgg19-dcbe5ed2.pth); default: the torch hub cache.")] = None,
    vgg_weight: Annotated[float, typer.Option(help="Weight of the perceptual term.")] = 10.0,
    l1: Annotated[float, typer.Option(help="Weight of an L1 term to the toon (0 = pix2pixHD's objective).")] = 0.0,
    ndf: Annotated[int, typer.Option(help="Discriminator width.")] = 64,
    num_d: Annotated[int, typer.Option(help="Discriminator scales.")] = 2,
    ema_decay: Annotated[float, typer.Option(help="Per-step decay of the exported moving-average student.")] = 0.999,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip each network's gradient norm to this.")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Flips, jitter, photo degradations.")] = True,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="float16 mixed precision (CUDA only).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the data order.")] = 0,
    workers: Annotated[int, typer.Option(help="Data-loading processes per training process.")] = 2,
    device: Annotated[str, typer.Option(help="auto (cuda:LOCAL_RANK when present), cpu, cuda, ...")] = "auto",
    log_every: Annotated[int, typer.Option(help="Steps between lines of stats.jsonl.")] = 50,
    sample_every: Annotated[int, typer.Option(help="Steps between sample grids.")] = 500,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 1000,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue this run folder exactly where it stopped, with its own settings (config.json).")] = None,
    stop_at: Annotated[Optional[int], typer.Option(
        help="End this session after this step with a checkpoint (continue later with --resume).")] = None,
) -> None:
    """Train the pix2pixHD student on pairs (under torchrun: DDP, one process per GPU or CPU share)."""
    from dataclasses import replace

    from distill.train import TrainConfig, load_run_config
    from distill.train import train as run_training
    from runtime.common import ToonifyError
    given = {name for name in ctx.params if ctx.get_parameter_source(name).name == "COMMANDLINE"}
    if resume is not None:
        refused = sorted(given - _SESSION_OPTIONS - {"resume", "stop_at"})
        if refused:
            raise ToonifyError(f"--resume continues a run with its own settings; leave out "
                               f"{', '.join('--' + name.replace('_', '-') for name in refused)}", resume,
                               hint="start a new run to change them")
        cfg = replace(load_run_config(resume), **{name: ctx.params[name] for name in given & _SESSION_OPTIONS})
    elif pairs is None:
        raise ToonifyError("--pairs is needed to start a run", hint="or continue one with --resume RUN_FOLDER")
    else:
        cfg = TrainConfig(pairs=pairs, out=output, preset=preset, res=res, steps=steps, batch_size=batch_size, lr=lr,
                          decay_start=decay_start, gan=gan, gan_mode=gan_mode, feat_weight=feat_weight, vgg=vgg,
                          vgg_weights=vgg_weights, vgg_weight=vgg_weight, l1_weight=l1, ndf=ndf, num_d=num_d,
                          ema_decay=ema_decay, grad_clip=grad_clip, augment=augment, amp=amp, seed=seed,
                          workers=workers, device=device, log_every=log_every, sample_every=sample_every,
                          checkpoint_every=checkpoint_every)
    result = run_training(cfg, resume=resume, stop_at=stop_at)
    if result.run_dir is not None:
        typer.echo(result.run_dir)


@app.command("eval")
def evaluate(
    student: Annotated[Path, typer.Option(help="Student weights from `distill train` (RUN/student-ema.pt).")],
    pairs: Annotated[Path, typer.Option(help="Held-out pair folder (e.g. pairs/val).")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the JSON report here (default: print it to stdout).")] = None,
    res: Annotated[Optional[int], typer.Option(help="Evaluation resolution (default: the student's training one).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, ...")] = "auto",
) -> None:
    """PSNR and SSIM (and LPIPS when its weights are local) of a student against the teacher, and of the identity."""
    import json

    from distill.evaluate import evaluate_file
    from runtime.common import write_json_atomic
    report = evaluate_file(student, pairs, res, device)
    if output is None:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        write_json_atomic(output, report)
        typer.echo(output)


# ---- project, compare: distill/project.py (the slow original Toonify path, as the reference) ----

ProjImages = Annotated[list[str], typer.Argument(
    metavar="IMAGE", show_default=False,
    help="Photos, folders or glob patterns; the largest face of each is aligned as the runtime does.")]
ProjBase = Annotated[Path, typer.Option(help="Base (FFHQ) checkpoint: the photo is projected into its latent space.")]
ProjBlended = Annotated[Path, typer.Option(help="Blended checkpoint from `distill blend`: renders the latent as a toon.")]
ProjOutput = Annotated[Path, typer.Option("--output", "-o", help="Folder for the results (made if missing).")]
ProjSteps = Annotated[int, typer.Option(min=1, help="Optimisation steps per image.")]
ProjWplus = Annotated[bool, typer.Option("--wplus", help="Optimise one w per layer (w+) instead of a single w.")]
ProjVggWeights = Annotated[Optional[Path], typer.Option(
    help="torchvision's VGG16 state dict (vgg16-397923af.pth) for the perceptual loss (default: the torch hub cache).")]
ProjNoVgg = Annotated[bool, typer.Option("--no-vgg", help="No perceptual loss: pixel loss only (when no VGG16 weights exist).")]
ProjNoAlign = Annotated[bool, typer.Option("--no-align", help="Each image is already an aligned face: only resize it.")]
ProjDevice = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1, ...")]
ProjSeed = Annotated[int, typer.Option(help="Seed of the initial noise maps and the latent noise.")]


def _project_config(base, blended, images, output, steps, wplus, vgg_weights, no_vgg, no_align, device, seed):
    from distill.project import ProjectConfig
    from runtime.common import ToonifyError
    from runtime.photos import expand_inputs
    if no_vgg and vgg_weights is not None:
        raise ToonifyError("--no-vgg and --vgg-weights contradict each other", hint="pass one of them", exit_code=2)
    return ProjectConfig(base=base, blended=blended, images=tuple(expand_inputs(images)), out=output, steps=steps,
                         wplus=wplus, vgg=not no_vgg, vgg_weights=vgg_weights, align=not no_align, device=device,
                         seed=seed)


@app.command()
def project(images: ProjImages, base: ProjBase, blended: ProjBlended, output: ProjOutput, steps: ProjSteps = 500,
            wplus: ProjWplus = False, vgg_weights: ProjVggWeights = None, no_vgg: ProjNoVgg = False,
            no_align: ProjNoAlign = False, device: ProjDevice = "auto", seed: ProjSeed = 0) -> None:
    """Toonify by optimisation (the original, slow method): project each photo into the base model, render with the blend.

    Writes NAME_target.png, NAME_projected.png, NAME_toon.png and NAME_w.npy per image, and project.json.
    Exit status 1 when some image was skipped (unreadable, no face).
    """
    from distill.project import project_files
    results = project_files(_project_config(base, blended, images, output, steps, wplus, vgg_weights, no_vgg,
                                            no_align, device, seed))
    raise typer.Exit(1 if any("skipped" in r for r in results) else 0)


@app.command()
def compare(images: ProjImages,
            student: Annotated[Path, typer.Option(help="The exported student (.onnx) to judge.")],
            base: ProjBase, blended: ProjBlended, output: ProjOutput, steps: ProjSteps = 500,
            wplus: ProjWplus = False, vgg_weights: ProjVggWeights = None, no_vgg: ProjNoVgg = False,
            no_align: ProjNoAlign = False, device: ProjDevice = "auto", seed: ProjSeed = 0) -> None:
    """The student against projection+blend on real photos: side-by-side PNGs and PSNR/SSIM in compare.json.

    Exit status 1 when some image was skipped (unreadable, no face).
    """
    from distill.project import CompareConfig, compare_files
    report = compare_files(CompareConfig(student=student, projection=_project_config(
        base, blended, images, output, steps, wplus, vgg_weights, no_vgg, no_align, device, seed)))
    typer.echo(output / "compare.json")
    raise typer.Exit(1 if any("skipped" in r for r in report["results"]) else 0)


if __name__ == "__main__":
    # `torchrun --nproc_per_node K -m distill.cli train ...`: the same command, its errors printed the same way.
    import sys

    from runtime.cli import main
    main(["distill", *sys.argv[1:]])
