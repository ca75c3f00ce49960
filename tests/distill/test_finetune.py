"""Fine-tuning: it moves the fixture toward a folder with a known answer (lower SWD) and stays
blendable; FreezeD keeps its tensors; a stopped and resumed run ends bit for bit as a straight one."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from distill.blend import BlendConfig, blend_files
from distill.checkpoint import load_generator
from distill.cli import app
from distill.discriminator import load_discriminator
from distill.finetune import FinetuneConfig, FinetuneError, finetune
from distill.runs import RunFolderError
from distill.stylegan2 import architecture_difference
from runtime.common import ToonifyError, UsageError
from tests.helpers import BASE, ddp_ranks, fake_inception_state, make_toon_folder


def tiny(images, out, **overrides) -> FinetuneConfig:
    settings = dict(base=BASE, images=images, output=out, kimg=0.032, batch=4, augment="ada", ada_kimg=0.05,
                    target=0.3, freeze_d=1, snap_kimg=0.016, swd_images=16, device="cpu", log_every=2)
    return FinetuneConfig(**{**settings, **overrides})


def stats(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


@pytest.fixture(scope="module")
def toons(tmp_path_factory):
    return make_toon_folder(tmp_path_factory.mktemp("toons"))


@pytest.fixture(scope="module")
def learned(toons, tmp_path_factory):
    """20 steps of batch 4 toward the recoloured, posterised renders (no augmentation, no path length),
    G_ema with NVlabs' from-scratch ramp (its half-life 0.05 of the images seen: G_ema follows G)."""
    return finetune(FinetuneConfig(base=BASE, images=toons, output=tmp_path_factory.mktemp("runs"), kimg=0.08,
                                   augment="none", pl_weight=0, snap_kimg=0.08, swd_images=48, device="cpu",
                                   ema_rampup=0.05))


@pytest.fixture(scope="module")
def straight(toons, tmp_path_factory):
    """Eight steps with everything on (ADA, path length, R1, FreezeD of b32), never stopped."""
    result = finetune(tiny(toons, tmp_path_factory.mktemp("straight")))
    assert result.step == 8
    return result.run_dir


def test_finetune_lowers_the_distance_to_the_images(learned):
    swd = [s for s in stats(learned.run_dir) if "metric/swd" in s]
    assert [s["kimg"] for s in swd] == [0.0, 0.08]
    ratio = swd[-1]["metric/swd"] / swd[0]["metric/swd"]
    print(f"SWD {swd[0]['metric/swd']:.1f} -> {swd[-1]['metric/swd']:.1f}: ratio {ratio:.3f}")
    assert ratio < 0.7, swd


def test_the_result_is_blendable_and_the_run_folder_complete(learned, tmp_path):
    run = learned.run_dir
    tuned, base = load_generator(run / "finetuned.safetensors"), load_generator(BASE)
    assert architecture_difference(base, tuned) is None and tuned.state_dict().keys() == base.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))
    blended = load_generator(blend_files(BASE, run / "finetuned.safetensors", BlendConfig(swap_res=16),
                                         tmp_path / "blended.safetensors"))
    assert architecture_difference(base, blended) is None
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [
        "kimg-000000.080.png", "kimg-000000.080.safetensors"]
    assert np.asarray(Image.open(run / "snapshots" / "kimg-000000.080.png")).shape == (64, 256, 3)   # base | tuned
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == {"gamma": 0.0512, "lr": 0.0025, "ema_kimg": 1.25, "mbstd_group": 4, "total_steps": 20}
    logged = next(s for s in stats(run) if "loss/G" in s)
    assert {"loss/G", "loss/D", "loss/r1", "augment/p", "kimg_per_s"} <= logged.keys()
    assert any(p.name.startswith("events.") for p in (run / "tensorboard").iterdir())


def test_freeze_d_keeps_the_first_blocks_bit_for_bit(straight):
    before, after = load_discriminator(BASE).state_dict(), state(straight)["D"]
    frozen = [k for k in before if k.startswith("b32.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["b16.conv0.weight"], after["b16.conv0.weight"])


def test_resume_ends_bit_for_bit_as_a_straight_run(toons, straight, tmp_path):
    cfg = tiny(toons, tmp_path)
    first = finetune(cfg, stop_at=5)
    assert first.step == 5 and state(first.run_dir)["step"] == 5
    assert "continue: toonify-fast distill finetune --resume" in (first.run_dir / "log.txt").read_text()
    resumed = finetune(cfg, resume=first.run_dir)
    assert resumed.step == 8
    a, b = state(straight), state(resumed.run_dir)
    assert 0 < a["ada"]["p"] == b["ada"]["p"] and torch.equal(a["pl_mean"], b["pl_mean"])
    for key in ("G", "G_ema", "D"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for key in ("opt_G", "opt_D"):
        assert all(torch.equal(x, y) for s, t in zip(a[key]["state"].values(), b[key]["state"].values())
                   for x, y in zip(s.values(), t.values())), key
    assert [s for s in stats(straight) if s["kimg"] == 0.032 and "metric/swd" in s] == \
        [s for s in stats(resumed.run_dir) if s["kimg"] == 0.032 and "metric/swd" in s]
    with pytest.raises(RunFolderError, match="started with other settings: kimg"):
        finetune(tiny(toons, tmp_path, kimg=1.0), resume=first.run_dir)


def test_cli_resume_refuses_new_settings_and_bad_options(straight, toons):
    result = CliRunner().invoke(app, ["finetune", "--resume", str(straight), "--kimg", "2"])
    assert isinstance(result.exception, UsageError) and "leave out --kimg" in str(result.exception)
    with pytest.raises(FinetuneError, match="augment must be one of"):
        FinetuneConfig(base=BASE, images=toons, augment="bgc")
    with pytest.raises(UsageError, match=r"--freeze-d 4: the discriminator has 3 blocks \(b32..b8\)"):
        finetune(FinetuneConfig(base=BASE, images=toons, freeze_d=4, device="cpu"))


def test_two_ddp_processes_compute_what_one_does(toons, tmp_path):
    # Minibatch-stddev groups of 2: one process's groups of a batch of 4 are exactly the two ranks' halves.
    cfg = tiny(toons, tmp_path / "runs", kimg=0.008, mbstd_group=2, log_every=1, swd_images=4)
    ranks = ddp_ranks(finetune, cfg, tmp_path)
    assert ranks[0]["G"].keys() == ranks[1]["G"].keys()
    assert all(torch.equal(ranks[0]["G"][k], ranks[1]["G"][k]) for k in ranks[0]["G"])
    run_dir = tmp_path / "runs" / "00000-finetune-32"
    assert [r["run_dir"] for r in ranks] == [str(run_dir), "None"]
    single = finetune(tiny(toons, tmp_path / "single", kimg=0.008, mbstd_group=2, log_every=1, swd_images=4))
    ddp, one = ([s for s in stats(folder) if "loss/G" in s] for folder in (run_dir, single.run_dir))
    keys = ["D/fake", "D/real", "loss/D", "loss/G", "loss/pl", "loss/r1"]
    assert [s["step"] for s in ddp] == [1, 2] and keys == sorted(k for k in ddp[0] if "/" in k and k != "augment/p")
    for a, b in zip(ddp, one):
        np.testing.assert_allclose([a[k] for k in keys if k in a], [b[k] for k in keys if k in b], rtol=1e-4, atol=1e-5)
    G_single = state(single.run_dir)["G"]
    for k, v in ranks[0]["G"].items():
        torch.testing.assert_close(v, G_single[k], rtol=1e-3, atol=1e-4)


def test_kid_and_fid_are_logged_at_snapshots_with_local_inception_weights(toons, tmp_path, capsys):
    weights = fake_inception_state(tmp_path / "pt_inception.pth")
    result = finetune(tiny(toons, tmp_path / "runs", kimg=0.016, swd_images=8, inception=weights))
    snaps = [s for s in stats(result.run_dir) if "metric/swd" in s]
    assert [s["kimg"] for s in snaps] == [0.0, 0.016]
    assert all(np.isfinite(s["metric/kid"]) and s["metric/fid"] > 0 for s in snaps)
    assert "KID and FID are off" not in capsys.readouterr().out


def test_a_bad_inception_file_stops_the_run_before_training(toons, tmp_path):
    with pytest.raises(ToonifyError, match="Mixed_6b.branch1x1.conv.weight is in the FID Inception but not"):
        finetune(tiny(toons, tmp_path / "runs", inception=fake_inception_state(
            tmp_path / "bad.pth", drop="Mixed_6b.branch1x1.conv.weight")))


def test_g_ema_has_its_whole_half_life_from_the_first_step(toons, tmp_path):
    """No ramp by default (NVlabs' setting for a run from a trained network): after one step G_ema has
    moved 1 - 0.5 ** (4 / 1250) of the way from the base to G (half-life 1.25 kimg at batch 4)."""
    result = finetune(tiny(toons, tmp_path, kimg=0.004, freeze_d=0, swd_images=4))
    base, G, G_ema = (m.state_dict() for m in (load_generator(BASE), result.G, result.G_ema))
    key = "synthesis.b32.conv1.weight"
    assert not torch.equal(G[key], base[key])
    torch.testing.assert_close(G_ema[key], base[key] + (G[key] - base[key]) * (1 - 0.5 ** (4 / 1250)),
                               rtol=0, atol=1e-6)


@pytest.mark.long
def test_a_few_hundred_steps_lower_the_distance_steadily(toons, tmp_path):
    """300 steps of batch 4 (1.2 kimg) toward the recoloured, posterised renders with the default
    G_ema (no ramp): G_ema's SWD to the folder falls at every snapshot, to 0.535 of the base's
    (seed 0; 0.650 and 0.587 with seeds 1 and 2, falling at every 50 steps too), while G alone swings
    between 0.41 and 1.04 of it over the same steps. Two sets of 48 renders of the same answer lie
    0.13..0.18 of the base's SWD apart: the ratio is far above that noise floor."""
    result = finetune(FinetuneConfig(base=BASE, images=toons, output=tmp_path, kimg=1.2, augment="none", pl_weight=0,
                                     snap_kimg=0.4, swd_images=48, device="cpu"))
    swd = [s for s in stats(result.run_dir) if "metric/swd" in s]
    assert [s["kimg"] for s in swd] == [0.0, 0.4, 0.8, 1.2]
    values = [s["metric/swd"] for s in swd]
    print("SWD " + " -> ".join(f"{v:.1f}" for v in values) + f": ratio {values[-1] / values[0]:.3f}")
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[-1] / values[0] < 0.7, values
