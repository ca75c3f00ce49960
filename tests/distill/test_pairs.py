"""Paired data and sample grids: pairs match a reference rendering, depend only on (seed, i)
whatever the batch size, sharding or interruption, and a folder made otherwise is refused."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import distill.pairs as pairs
from distill.blend import BlendConfig, blend_files
from distill.checkpoint import file_sha256, load_generator
from distill.cli import app
from distill.device import resolve_device
from distill.pairs import (PairsConfig, PairsError, generate_pairs, pair_latents, pair_seed, parse_seeds,
                           read_manifest, resolve_shard, seed_latents)
from runtime.common import ToonifyError, UsageError
from runtime.images import grid_margins, image_grid, nchw_to_hwc
from tests.helpers import BASE, make_toon


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """(toon, blended at 8 px, a blend that swaps no block) checkpoint paths."""
    folder = tmp_path_factory.mktemp("teachers")
    make_toon(folder / "toon.safetensors")
    blend_files(BASE, folder / "toon.safetensors", BlendConfig(swap_res=8), folder / "blended.safetensors")
    blend_files(BASE, folder / "toon.safetensors", BlendConfig(swap_res=2), folder / "noop.safetensors")
    return {name: folder / f"{name}.safetensors" for name in ("toon", "blended", "noop")}


def make(teachers, out, blended="blended", **kwargs) -> pairs.PairsSummary:
    return generate_pairs(PairsConfig(base=BASE, blended=teachers[blended], output=out, device="cpu",
                                      **{"count": 5, **kwargs}))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative name -> bytes), manifests and pairs.json included."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_seeds_shards_and_per_pair_seeds():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10] and parse_seeds("1,5,9") == [1, 5, 9]
    with pytest.raises(ToonifyError, match=r"cannot read seeds '3-1' \(at '3-1'\)"):
        parse_seeds("3-1")
    assert resolve_shard("1/4", env={}) == (1, 4) and resolve_shard(None, env={}) == (0, 1)
    assert resolve_shard(None, env={"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    with pytest.raises(UsageError, match="both split the work"):
        resolve_shard("0/2", env={"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="cannot read shard '2/2'"):
        resolve_shard("2/2", env={})
    with pytest.raises(ToonifyError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    assert pair_seed(0, 1, "latent") != pair_seed(0, 2, "latent") != pair_seed(1, 1, "latent")
    assert torch.equal(pair_latents(7, 3, 64, 8, 0.0)[0], pair_latents(7, 3, 64, 8, 0.0)[0])
    z = seed_latents([5], 64)
    assert torch.equal(z[0], torch.from_numpy(np.random.RandomState(5).randn(64)).float())


def test_pairs_are_the_two_teachers_on_the_same_latents(teachers, tmp_path):
    summary = make(teachers, tmp_path / "p", count=3, val_count=2, save_latents=True)
    assert (summary.made, summary.skipped) == (5, 0)
    base, blended = load_generator(BASE), load_generator(teachers["blended"])
    indices = [0, 1, 2, 3, 4]
    z = torch.stack([pair_latents(0, i, base.z_dim, base.num_ws, 0.0)[0] for i in indices])
    ws = torch.cat([base.mapping(z[i:i + 1], truncation_psi=0.7) for i in indices])   # one at a time, as on CPU
    real = nchw_to_hwc(torch.cat([base.synthesis(ws[i:i + 1]) for i in indices]).numpy())
    toon = nchw_to_hwc(torch.cat([blended.synthesis(ws[i:i + 1]) for i in indices]).numpy())
    for i in indices:
        split = tmp_path / "p" / ("val" if i >= 3 else "")
        assert np.array_equal(np.asarray(Image.open(split / f"real/{i:06d}.png")), real[i])
        assert np.array_equal(np.asarray(Image.open(split / f"toon/{i:06d}.png")), toon[i])
        assert np.array_equal(np.load(split / f"latents/{i:06d}.npy"), ws[i].numpy())
    assert not np.array_equal(real, toon)
    manifest = read_manifest(tmp_path / "p")
    assert manifest[1] == {"index": 1, "seed": 0, "psi": 0.7, "real": "real/000001.png", "toon": "toon/000001.png",
                           "latent": "latents/000001.npy", "base_sha256": file_sha256(BASE),
                           "blended_sha256": file_sha256(teachers["blended"])}
    assert [e["index"] for e in read_manifest(tmp_path / "p" / "val")] == [3, 4]
    settings = json.loads((tmp_path / "p" / "pairs.json").read_text())
    assert [settings[k] for k in ("count", "val_count", "res", "teacher_resolution")] == [3, 2, 32, 32]
    assert not list((tmp_path / "p").rglob("manifest-*"))


def test_batch_size_and_shards_never_change_a_pair(teachers, tmp_path):
    make(teachers, tmp_path / "b1", batch_size=1)
    make(teachers, tmp_path / "b3", batch_size=3)
    make(teachers, tmp_path / "s", shard=(1, 2))
    assert not (tmp_path / "s" / "manifest.jsonl").exists()           # half the set: only its part
    assert len((tmp_path / "s" / "manifest-00001-of-00002.jsonl").read_text().splitlines()) == 2
    make(teachers, tmp_path / "s", shard=(0, 2))
    assert tree(tmp_path / "b1") == tree(tmp_path / "b3") == tree(tmp_path / "s")


def test_a_killed_run_resumes_to_the_straight_result(teachers, tmp_path, monkeypatch):
    make(teachers, tmp_path / "straight", noise="random", style_mixing=0.5)
    write, calls = pairs.write_image, []

    def dies_on_the_eighth_image(*args):      # pairs 0-2 complete, pair 3 has its real image only
        calls.append(args)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return write(*args)
    monkeypatch.setattr(pairs, "write_image", dies_on_the_eighth_image)
    with pytest.raises(KeyboardInterrupt):
        make(teachers, tmp_path / "resumed", noise="random", style_mixing=0.5)
    monkeypatch.undo()
    out = tmp_path / "resumed"
    assert sorted(p.name for p in (out / "real").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert len((out / "manifest-00000-of-00001.jsonl").read_text().splitlines()) == 3
    (out / "toon" / ".000003.partial-x1y2.png").write_bytes(b"half an image")   # as a kill -9 leaves it
    summary = make(teachers, out, noise="random", style_mixing=0.5)
    assert (summary.made, summary.skipped) == (2, 3)
    assert tree(out) == tree(tmp_path / "straight")
    assert [e.get("mix_cutoff") for e in read_manifest(out)] == [
        pair_latents(0, i, 64, 8, 0.5)[2] for i in range(5)]


def test_noise_is_shared_by_both_teachers(teachers, tmp_path):
    # A blend that swaps no block is the base: with the same w+ and noise its images are the base's.
    make(teachers, tmp_path / "random", blended="noop", noise="random", count=2)
    make(teachers, tmp_path / "const", blended="noop", count=2)
    files = tree(tmp_path / "random")
    assert files["real/000000.png"] == files["toon/000000.png"]
    assert files["real/000001.png"] == files["toon/000001.png"]
    assert files["real/000000.png"] != tree(tmp_path / "const")["real/000000.png"]


def test_resized_jpeg_pairs(teachers, tmp_path):
    make(teachers, tmp_path / "j", count=1, res=48, format="jpg")
    img = Image.open(tmp_path / "j" / "real" / "000000.jpg")
    assert (img.format, img.size) == ("JPEG", (48, 48))
    make(teachers, tmp_path / "p", count=1, res=48)
    base = load_generator(BASE)
    ws = base.mapping(pair_latents(0, 0, 64, 8, 0.0)[0][None], truncation_psi=0.7)
    reference = Image.fromarray(nchw_to_hwc(base.synthesis(ws).numpy())[0]).resize((48, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "real" / "000000.png")), np.asarray(reference))


def test_a_folder_made_otherwise_is_refused(teachers, tmp_path):
    make(teachers, tmp_path / "p", count=2)
    with pytest.raises(PairsError) as e:
        make(teachers, tmp_path / "p", count=2, psi=0.5)
    assert str(e.value) == (f"{tmp_path / 'p' / 'pairs.json'}: this pair set was made with psi = 0.7; this run "
                            "asks for 0.5\n  hint: use a new output folder, or the same teachers and settings to "
                            "complete this set")
    with pytest.raises(PairsError, match=f"made with blended_sha256 = '{file_sha256(teachers['blended'])}'"):
        make(teachers, tmp_path / "p", count=2, blended="noop")
    (tmp_path / "other" / "real").mkdir(parents=True)
    with pytest.raises(PairsError, match="the folder holds real but no pairs.json"):
        make(teachers, tmp_path / "other", count=2)
    with pytest.raises(PairsError, match="--fp16 needs a CUDA device"):
        make(teachers, tmp_path / "fp16", fp16=True)


def test_cli_sample_grid_rows_are_networks_and_columns_seeds(teachers, tmp_path):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["sample", "--network", str(BASE), "--network", str(teachers["blended"]),
                                      "--network", str(teachers["toon"]), "--seeds", "0-2,7", "--psi", "0.5",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    labelled = np.asarray(Image.open(out))
    rows, cols = [BASE.stem, teachers["blended"].stem, teachers["toon"].stem], ["seed 0", "seed 1", "seed 2", "seed 7"]
    left, top = grid_margins(rows, cols)
    assert labelled.shape == (top + 3 * 32, left + 4 * 32, 3) and left > 8 and top > 8
    assert np.array_equal(labelled, image_grid([[labelled[top + 32 * r:top + 32 * (r + 1), left + 32 * c:left + 32 * (c + 1)]
                                                 for c in range(4)] for r in range(3)], row_labels=rows, col_labels=cols))
    grid = labelled[top:, left:]
    base, toon = load_generator(BASE), load_generator(teachers["toon"])
    ws = base.mapping(seed_latents([7], 64), truncation_psi=0.5)   # w from the FIRST network's mapping
    assert np.array_equal(grid[64:, 96:], nchw_to_hwc(toon.synthesis(ws).numpy())[0])
    assert np.array_equal(grid[:32, 96:], nchw_to_hwc(base.synthesis(ws).numpy())[0])


def test_cli_pairs_writes_the_set(teachers, tmp_path):
    result = CliRunner().invoke(app, ["pairs", "--base", str(BASE), "--blended", str(teachers["blended"]),
                                      "--count", "2", "--res", "32", "--seed", "3", "--shard", "0/1",
                                      "--device", "cpu", "-o", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert [e["seed"] for e in read_manifest(tmp_path / "p")] == [3, 3]
    assert sorted(tree(tmp_path / "p")) == ["manifest.jsonl", "pairs.json", "real/000000.png", "real/000001.png",
                                            "toon/000000.png", "toon/000001.png"]
