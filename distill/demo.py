"""The whole pipeline on a tiny demo teacher, then `toonify-fast` on a photo: what `make demo` runs.

    toonify-fast distill demo -o demo --model exports/demo.onnx

The demo teacher is a randomly initialised StyleGAN2 at 64 px and its "toon" fine-tune is a
perturbed copy: no pretrained weights exist on a fresh machine, and none are downloaded. It proves
that every stage runs and connects (blend, pairs, train, eval, export, convert); its pictures are
not cartoons. Both teacher files say so in their metadata.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.blend import BlendConfig, blend_files
from distill.checkpoint import save_generator
from distill.evaluate import evaluate_student
from distill.export import ExportConfig, bundled_portrait, export_student
from distill.pairs import PairsConfig, SampleConfig, generate_pairs, write_sample_grid
from distill.stylegan2 import Generator
from distill.runs import load_student
from distill.train import TrainConfig, train
from runtime.common import ToonifyError, console, write_json_atomic
from runtime.engine import DEMO_KEY, Toonifier
from runtime.images import image_grid, read_image, resize, write_image
from runtime.options import setting
from runtime.photos import ConvertConfig, convert_photos

DEMO_NOTE = "untrained demo teacher (random StyleGAN2 weights): proves the pipeline, not the look"


@dataclass(frozen=True)
class DemoConfig:
    output: Path = setting(Path("demo"), "Folder for the demo's teachers, pairs, run and contact sheet.",
                           flags=("-o", "--output", "--out"))
    model: Path = setting(Path("exports/demo.onnx"), "Where to export the demo student.")
    image: Path | None = setting(None, "A photo to convert at the end, every face in it (default: a public-domain "
                                       "portrait bundled with scikit-image). From make: make demo IMAGE=PHOTO.")
    res: int = setting(64, cli=False)           # the demo teacher's resolution
    pairs: int = setting(384, "Training pairs to render.")
    val_pairs: int = setting(16, cli=False)     # held-out pairs: evaluation and the contact sheet
    steps: int = setting(600, "Training steps of the student.")
    seed: int = setting(0, cli=False)


def demo_teachers(res: int, seed: int) -> tuple[Generator, Generator]:
    """(base, toon): a random StyleGAN2 and a recoloured, slightly reshaped copy standing in for a
    fine-tune. Untrained: see the module docstring."""
    torch.manual_seed(seed)
    base = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=res, img_channels=3,
                     mapping_kwargs={"num_layers": 4},
                     synthesis_kwargs={"channel_base": 4096, "channel_max": 64, "conv_clamp": 256})
    toon = Generator(**base.init_kwargs)
    toon.load_state_dict(base.state_dict())
    # The stand-in fine-tune recolours: its low-resolution ToRGB layers (the ones a blend at 16 px
    # takes from it) map colours through a hue rotation, and its low-resolution convolutions move a
    # little (shape). A student can learn that from pairs, and a photo shows it.
    hue = torch.tensor([[0.2, 0.9, -0.1], [-0.1, 0.2, 0.9], [0.9, -0.1, 0.2]])
    with torch.no_grad():
        for name, p in toon.named_parameters():
            block = name.split(".")[1] if name.startswith("synthesis.") else ""
            if block not in ("b4", "b8", "b16"):
                continue
            if ".torgb." in name and name.endswith(("torgb.weight", "torgb.bias")):
                p.copy_(torch.einsum("oc,c...->o...", hue, p))
            elif name.endswith("conv1.weight"):
                p.add_(0.15 * p.std() * torch.randn_like(p))
    return base.eval(), toon.eval()


SHEET_ROWS = ("base (real)", "blended (toon)", "student")


def contact_sheet(val_dir: Path, model: Path, photo: Path, converted: Path, dest: Path, n: int = 6) -> Path:
    """Rows (labelled SHEET_ROWS): teacher real | teacher toon | student on the real, for n held-out
    pairs; then the photo and its conversion side by side, labelled photo and toon."""
    names = sorted(p.name for p in (val_dir / "real").iterdir())[:n]
    real = [read_image(val_dir / "real" / name)[0] for name in names]
    toon = [read_image(val_dir / "toon" / name)[0] for name in names]
    student = list(Toonifier(model, provider="cpu").run(np.stack(real)))
    grid = image_grid([real, toon, student], tile=128, row_labels=list(SHEET_ROWS))
    width = grid.shape[1]
    before, after = read_image(photo)[0], read_image(converted)[0]
    h = round(before.shape[0] * (width / 2) / before.shape[1])
    pair = image_grid([[resize(i, width // 2, h) for i in (before, after)]], col_labels=["photo", "toon"])
    pair = np.pad(pair, ((0, 0), (0, width - pair.shape[1]), (0, 0)), constant_values=255)
    sheet = np.concatenate([grid, np.full((8, width, 3), 255, np.uint8), pair], axis=0)
    return write_image(dest, sheet)


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage into cfg.output; returns {stage: path} and writes it to cfg.output/demo.json."""
    start, out = time.perf_counter(), cfg.output
    console.print(f"[bold]toonify-fast demo[/bold]: {DEMO_NOTE}")
    base, toon = demo_teachers(cfg.res, cfg.seed)
    paths = {"base": out / "teacher" / "base.safetensors", "toon": out / "teacher" / "toon.safetensors",
             "blended": out / "teacher" / "blended.safetensors", "grid": out / "teacher_grid.png",
             "pairs": out / "pairs", "model": cfg.model, "eval": out / "eval.json"}
    for G, key in ((base, "base"), (toon, "toon")):
        save_generator(G, paths[key], {"note": DEMO_NOTE, "demo_seed": cfg.seed})

    console.print("1/6 blend: low resolutions (<= 16 px) from the toon model, the rest from the base")
    blend_files(paths["base"], paths["toon"], BlendConfig(swap_res=16), paths["blended"])
    write_sample_grid(SampleConfig(networks=(paths["base"], paths["toon"], paths["blended"]), output=paths["grid"],
                                   device="cpu"))

    console.print(f"2/6 pairs: {cfg.pairs} training + {cfg.val_pairs} held-out at {cfg.res} px")
    generate_pairs(PairsConfig(base=paths["base"], blended=paths["blended"], output=paths["pairs"], count=cfg.pairs,
                               seed=cfg.seed, val_count=cfg.val_pairs, device="cpu"))

    console.print(f"3/6 train: the lite student for {cfg.steps} steps (no VGG weights in the demo: GAN + L1)")
    result = train(TrainConfig(pairs=paths["pairs"], output=out / "runs", preset="lite", res=cfg.res, steps=cfg.steps,
                               batch_size=4, vgg=False, l1_weight=10.0, ndf=32, num_d=1, seed=cfg.seed,
                               workers=0, device="cpu",
                               sample_every=max(cfg.steps // 2, 1), checkpoint_every=cfg.steps))
    student = result.run_dir / "student-ema.pt"

    console.print("4/6 eval: PSNR/SSIM against the teacher on the held-out pairs")
    model, _ = load_student(student)
    report = evaluate_student(model, paths["pairs"] / "val", cfg.res)
    write_json_atomic(paths["eval"], report)

    console.print(f"5/6 export: {cfg.model}")
    # The metadata marks the untrained student: the CLI says so whenever it falls back to it.
    export_student(ExportConfig(student=student, output=cfg.model, extra_metadata=((DEMO_KEY, "1"),)))

    source = cfg.image or bundled_portrait()
    # The photo is kept (upright, as PNG) beside the results, so the README's next command has one to convert.
    photo = paths["photo"] = write_image(out / "photo.png", *read_image(source))
    paths["converted"] = out / "photo_toon.png"
    console.print(f"6/6 toonify-fast {photo} (from {source})")
    summary = convert_photos(ConvertConfig(inputs=(str(photo),), output=paths["converted"], model=cfg.model,
                                           provider="cpu"))
    if summary.failed:
        raise ToonifyError("the demo could not convert it: see the message above", source,
                           hint="pass another photo: make demo IMAGE=PHOTO (or toonify-fast distill demo --image PHOTO)")
    paths["contact_sheet"] = contact_sheet(paths["pairs"] / "val", cfg.model, photo, paths["converted"],
                                           out / "contact_sheet.png")
    paths["run"] = result.run_dir
    manifest = {k: str(v) for k, v in paths.items()}
    write_json_atomic(out / "demo.json", {**manifest, "seconds": round(time.perf_counter() - start, 1),
                                          "eval": report, "note": DEMO_NOTE})
    return manifest
