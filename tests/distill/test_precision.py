"""Mixed precision of `distill finetune`: fp16 off CUDA is refused before any work; a bf16 run on the
CPU trains (finite losses), lands near the fp32 run without equalling it, resumes bit for bit and
records its precision; on CUDA an fp16 run keeps its loss scalers in the checkpoint and resumes exactly."""
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from distill.checkpoint import load_generator
from distill.cli import app
from distill.finetune import FinetuneConfig, FinetuneError, finetune
from runtime.common import UsageError
from tests.helpers import BASE, make_toon_folder


def everything_on(images, out, **overrides) -> FinetuneConfig:
    """Eight steps of batch 4 with ADA, path length, R1 and FreezeD of b32."""
    settings = dict(base=BASE, images=images, output=out, kimg=0.032, batch=4, augment="ada", ada_kimg=0.05,
                    target=0.3, freeze_d=1, snap_kimg=0.016, swd_images=16, device="cpu", log_every=2)
    return FinetuneConfig(**{**settings, **overrides})


def state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


def stats(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def distance(a: dict, b: dict) -> float:
    """The Euclidean distance between two state dicts, over their floating-point tensors."""
    return math.sqrt(sum((a[k].double() - b[k].double()).square().sum().item() for k in a if a[k].is_floating_point()))


@pytest.fixture(scope="module")
def toons(tmp_path_factory):
    return make_toon_folder(tmp_path_factory.mktemp("toons"), count=16)


@pytest.fixture(scope="module")
def runs(toons, tmp_path_factory):
    """The same eight steps in fp32 and in bf16, never stopped."""
    return {precision: finetune(everything_on(toons, tmp_path_factory.mktemp(precision), precision=precision)).run_dir
            for precision in ("fp32", "bf16")}


def test_fp16_is_refused_on_the_cpu_before_any_work(tmp_path):
    with pytest.raises(UsageError) as caught:
        finetune(FinetuneConfig(base=BASE, images=tmp_path / "absent", output=tmp_path / "runs", precision="fp16",
                                device="cpu"))
    assert caught.value.reason == "--precision fp16 needs a CUDA device; this run is on cpu"
    assert caught.value.hint == "use --precision bf16 (autocast on the CPU too) or fp32"
    assert not (tmp_path / "runs").exists()
    with pytest.raises(FinetuneError, match=r"precision must be one of \('fp32', 'bf16', 'fp16'\), got 'fp8'"):
        FinetuneConfig(precision="fp8")


def test_bf16_trains_near_the_fp32_run(runs):
    """bf16's G ends 0.145..0.181 of the fp32 run's own move from the base away from the fp32 G
    (seeds 0..3 of these eight steps): a tolerance of 0.25."""
    fp32, bf16 = state(runs["fp32"]), state(runs["bf16"])
    losses = [s for s in stats(runs["bf16"]) if "loss/G" in s]
    assert [s["step"] for s in losses] == [2, 4, 6, 8]
    assert all(math.isfinite(s[k]) for s in losses for k in s if k.startswith(("loss/", "D/")))
    assert {"loss/pl", "loss/r1"} <= {k for s in losses for k in s}
    base = load_generator(BASE).state_dict()
    moved, apart = distance(fp32["G"], base), distance(fp32["G"], bf16["G"])
    print(f"G: fp32 moved {moved:.4f} from the base; bf16 lies {apart:.4f} from fp32 ({apart / moved:.3f})")
    assert 0 < apart < 0.25 * moved
    assert not torch.equal(fp32["D"]["b16.conv0.weight"], bf16["D"]["b16.conv0.weight"])
    config = json.loads((runs["bf16"] / "config.json").read_text())
    assert config["config"]["precision"] == "bf16"
    assert json.loads((runs["fp32"] / "config.json").read_text())["config"]["precision"] == "fp32"


def test_a_resumed_bf16_run_keeps_its_precision_and_ends_bit_for_bit_as_a_straight_one(toons, runs, tmp_path):
    cfg = everything_on(toons, tmp_path, precision="bf16")
    first = finetune(cfg, stop_at=5)
    refused = CliRunner().invoke(app, ["finetune", "--resume", str(first.run_dir), "--precision", "fp32"])
    assert isinstance(refused.exception, UsageError) and "leave out --precision" in str(refused.exception)
    resumed = finetune(cfg, resume=first.run_dir)
    a, b = state(runs["bf16"]), state(resumed.run_dir)
    assert resumed.step == 8 and "scaler_G" not in b
    for key in ("G", "G_ema", "D"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.gpu
def test_an_fp16_run_on_cuda_keeps_its_scalers_and_resumes_exactly(toons, tmp_path):
    cfg = everything_on(toons, tmp_path / "straight", precision="fp16", device="cuda")
    straight = state(finetune(cfg).run_dir)
    assert straight["scaler_G"]["scale"] > 0 and straight["scaler_D"]["scale"] > 0
    first = finetune(everything_on(toons, tmp_path / "stopped", precision="fp16", device="cuda"), stop_at=5)
    resumed = state(finetune(cfg, resume=first.run_dir).run_dir)
    assert straight["scaler_G"] == resumed["scaler_G"] and straight["scaler_D"] == resumed["scaler_D"]
    for key in ("G", "G_ema", "D"):
        assert all(torch.equal(straight[key][k], resumed[key][k]) for k in straight[key]), key
