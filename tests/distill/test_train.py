"""Training: the LR schedule and data order, exact resume, Ctrl-C, two DDP processes, the run
folder's files, student files, the CLI, and the proof that the student learns its teacher."""
import json
import os
import signal

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import distill.train as train_module
from distill.blend import BlendConfig, blend_files
from distill.checkpoint import load_generator, save_generator
from distill.cli import app
from distill.evaluate import evaluate_student
from distill.export import ExportConfig, export_student
from distill.losses import VGG_PLANS, MissingWeightsError
from distill.pairs import PairsConfig, generate_pairs
from distill.runs import RunFolderError, StudentFileError, load_student
from distill.train import StepBatches, TrainConfig, TrainError, learning_rate, load_run_config, train
from distill.translator import PRESETS, build_generator
from runtime.common import Interrupted, ToonifyError
from runtime.engine import Toonifier, read_model_info
from runtime.images import hwc_to_nchw, nchw_to_hwc
from tests.conftest import FIXTURES
from tests.helpers import ddp_ranks, make_pair_folder




def tiny(pairs, out, **overrides) -> TrainConfig:
    """Six steps of the full objective without VGG (GAN + feature matching + L1) on a 32 px lite student."""
    settings = dict(pairs=pairs, output=out, res=32, steps=6, batch_size=2, vgg=False, l1_weight=1.0, ndf=8,
                    workers=0, log_every=2, sample_every=3, checkpoint_every=2)
    return TrainConfig(**{**settings, **overrides})


def state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


def assert_same_tensors(a, b, path=""):
    """Every tensor in two nested structures is bitwise equal (same keys, same non-tensor values)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tensors(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_folder(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def straight(pairs, tmp_path_factory):
    """A six-step run never stopped: the reference for resumes."""
    result = train(tiny(pairs, tmp_path_factory.mktemp("straight")))
    assert result.step == 6
    return result.run_dir


def test_learning_rate_is_constant_then_decays_linearly_to_zero(tmp_path):
    cfg = TrainConfig(pairs=tmp_path, steps=10, decay_start=0.6, lr=1e-3)
    assert [learning_rate(cfg, s) for s in (0, 5)] == [1e-3, 1e-3]
    assert [round(learning_rate(cfg, s), 12) for s in (6, 7, 9)] == [1e-3, 0.00075, 0.00025]
    assert learning_rate(TrainConfig(pairs=tmp_path, steps=4, decay_start=1.0), 3) == 2e-4


def test_config_refuses_what_cannot_train(tmp_path):
    with pytest.raises(TrainError, match="res must be a positive multiple of 8 for the lite student, got 30"):
        TrainConfig(pairs=tmp_path, res=30)
    with pytest.raises(TrainError, match="every loss term is off"):
        TrainConfig(pairs=tmp_path, gan=False, vgg=False)
    with pytest.raises(TrainError, match="unknown preset 'huge'"):
        TrainConfig(pairs=tmp_path, preset="huge")
    cfg = TrainConfig(pairs=tmp_path / "p", vgg_weights=tmp_path / "w.pth", grad_clip=1.0)
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


def test_batches_depend_only_on_stream_positions():
    one = list(StepBatches(n=10, seed=3, batch_size=2, rank=0, world=1, first=0, count=12))
    ranks = [list(StepBatches(n=10, seed=3, batch_size=1, rank=r, world=2, first=0, count=12)) for r in (0, 1)]
    # Two ranks x 1 image see exactly the global batches of one process x 2 images, split by rank.
    assert [a + b for a, b in zip(*ranks)] == one
    # Each epoch visits every pair once, in its own order.
    keys = [k for batch in one for k in batch]
    epochs = [[i for e, i in keys if e == epoch] for epoch in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10)) and epochs[0] != epochs[1]
    # Resuming at position 8 (4 steps of 2) continues the same stream.
    assert list(StepBatches(10, 3, 2, 0, 1, first=8, count=8)) == one[4:]


def test_resume_ends_with_the_same_weights(pairs, straight, tmp_path):
    cfg = tiny(pairs, tmp_path)
    first = train(cfg, stop_at=3)
    assert first.step == 3 and state(first.run_dir)["step"] == 3
    assert "continue: toonify-fast distill train --resume" in (first.run_dir / "log.txt").read_text()
    resumed = train(cfg, resume=first.run_dir)
    assert resumed.step == 6 and resumed.run_dir == first.run_dir
    a, b = state(straight), state(resumed.run_dir)
    for key in ("step", "samples_seen", "G", "G_ema", "D", "opt_G", "opt_D"):
        assert_same_tensors(a[key], b[key], key)
    for name in ("student.pt", "student-ema.pt"):
        assert_same_tensors(torch.load(straight / name, weights_only=True)["state_dict"],
                            torch.load(resumed.run_dir / name, weights_only=True)["state_dict"], name)
    with pytest.raises(RunFolderError, match="started with other settings: steps, lr"):
        train(tiny(pairs, tmp_path, lr=1e-3, steps=8), resume=first.run_dir)


def test_ctrl_c_saves_a_checkpoint_and_resumes_exactly(pairs, straight, tmp_path, monkeypatch):
    calls = []

    def interrupt_at_second_step(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return update_ema(*args)

    update_ema = train_module.update_ema
    monkeypatch.setattr(train_module, "update_ema", interrupt_at_second_step)
    before = signal.getsignal(signal.SIGINT)    # SIG_IGN when the suite runs as a background job
    with pytest.raises(Interrupted) as stopped:
        train(tiny(pairs, tmp_path))
    assert stopped.value.exit_code == 130
    assert "stopped by a signal at step 2 of 6; the state is saved" in str(stopped.value)
    run_dir = next((tmp_path).iterdir())
    assert f"hint: continue with: toonify-fast distill train --resume {run_dir}" in str(stopped.value)
    assert state(run_dir)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before      # the handler it found is restored
    monkeypatch.setattr(train_module, "update_ema", update_ema)
    train(tiny(pairs, tmp_path), resume=run_dir)
    assert_same_tensors(state(straight)["G_ema"], state(run_dir)["G_ema"])


def test_run_folder_holds_config_logs_samples_and_loadable_students(pairs, straight):
    cfg = tiny(pairs, straight.parent)
    assert straight.name == "00000-lite-32" and load_run_config(straight) == cfg
    config = json.loads((straight / "config.json").read_text())
    assert config["student"]["ngf"] == PRESETS["lite"].ngf and config["global_batch"] == 2
    log = (straight / "log.txt").read_text()
    assert "starting" in log and "finished at step 6 of 6" in log
    stats = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [2, 4, 6]
    assert {"lr", "images_per_s", "loss/g_gan", "loss/g_feat", "loss/g_l1", "loss/g_total", "loss/d_gan"} == \
        set(stats[0]) - {"step"}
    assert stats[2]["lr"] == learning_rate(cfg, 5) and all(np.isfinite(list(s.values())).all() for s in stats)
    assert sorted(p.name for p in (straight / "samples").iterdir()) == \
        ["step-000000.png", "step-000003.png", "step-000006.png"]
    # Rows input | student | teacher, one column per held-out pair (4 here).
    assert Image.open(straight / "samples" / "step-000006.png").size == (4 * 32, 3 * 32)
    assert any(p.name.startswith("events.out.tfevents") for p in (straight / "tensorboard").iterdir())

    raw = torch.load(straight / "student-ema.pt", weights_only=True)
    assert raw["meta"]["teacher_base_sha256"] == "b" * 64 and raw["meta"]["teacher_blended_sha256"] == "d" * 64
    model, info = load_student(straight / "student-ema.pt")
    assert info.resolution == 32 and info.size_multiple == 8 and info.step == 6 and info.ema
    assert info.preset == "lite" and not model.training
    assert_same_tensors(model.state_dict(), state(straight)["G_ema"])


def test_load_student_names_what_is_wrong(straight, tmp_path):
    with pytest.raises(StudentFileError, match="training state \\(latest.pt\\), not student weights"):
        load_student(straight / "checkpoints" / "latest.pt")
    data = torch.load(straight / "student.pt", weights_only=True)
    data["state_dict"]["net.head.1.weight"] = torch.zeros(3, 3, 7, 7)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(StudentFileError, match=r"tensor net.head.1.weight has shape \(16, 3, 7, 7\) in the "
                                               r"architecture and \(3, 3, 7, 7\) in the file"):
        load_student(tmp_path / "bad.pt")
    with pytest.raises(StudentFileError, match="no such file"):
        load_student(tmp_path / "missing.pt")


def test_missing_vgg_weights_stop_the_run_before_it_starts(pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(MissingWeightsError, match="no VGG19 weights found") as missing:
        train(tiny(pairs, tmp_path / "runs", vgg=True))
    assert "--no-vgg" in str(missing.value) and not (tmp_path / "runs").exists()


def test_perceptual_term_uses_the_given_vgg_weights(pairs, tmp_path):
    # Random VGG19 weights in torchvision's layout: only the plumbing is under test here.
    state, index, channels = {}, 0, 3
    for item in VGG_PLANS["vgg19"][:17]:   # through conv5_1, the deepest layer pix2pixHD taps
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(item)
        index, channels = index + 2, item
    torch.save(state, tmp_path / "vgg19.pth")
    result = train(tiny(pairs, tmp_path / "runs", steps=2, gan=False, vgg=True, vgg_weights=tmp_path / "vgg19.pth",
                        grad_clip=0.5))
    stats = [json.loads(line) for line in (result.run_dir / "stats.jsonl").read_text().splitlines()]
    assert set(stats[0]) == {"step", "lr", "images_per_s", "loss/g_vgg", "loss/g_l1", "loss/g_total"}
    assert stats[0]["loss/g_total"] == pytest.approx(10 * stats[0]["loss/g_vgg"] + stats[0]["loss/g_l1"], rel=1e-5)


def test_cli_trains_and_resume_refuses_new_settings(pairs, tmp_path):
    runner = CliRunner()
    args = ["train", "--pairs", str(pairs), "--res", "32", "--steps", "2", "--batch-size", "1", "--no-vgg",
            "--l1", "1", "--ndf", "8", "--workers", "0", "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "00000-lite-32"
    assert result.stdout.strip() == str(run_dir) and state(run_dir)["step"] == 2
    refused = runner.invoke(app, ["train", "--resume", str(run_dir), "--lr", "0.1", "--workers", "0"])
    assert isinstance(refused.exception, ToonifyError)
    assert "--resume continues a run with its own settings; leave out --lr" in str(refused.exception)
    missing = runner.invoke(app, ["train", "--res", "32"])
    assert "--pairs is needed to start a run" in str(missing.exception)


def test_two_ddp_processes_end_with_identical_weights(pairs, tmp_path):
    cfg = tiny(pairs, tmp_path / "runs", steps=3, batch_size=1, checkpoint_every=100, log_every=1)
    ranks = ddp_ranks(train, cfg, tmp_path)
    assert_same_tensors(ranks[0]["G"], ranks[1]["G"])
    run_dir = tmp_path / "runs" / "00000-lite-32"
    assert [r["run_dir"] for r in ranks] == [str(run_dir), "None"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]   # rank 1 wrote nothing
    torch.manual_seed(cfg.seed)
    initial = build_generator("lite").state_dict()
    assert not torch.equal(ranks[0]["G"]["net.head.1.weight"], initial["net.head.1.weight"])
    assert_same_tensors(ranks[0]["G"], state(run_dir)["G"])

    # The ranks split each global batch: one process given both images per step computes the same
    # losses (step 1 from the same initial weights; later ones within float noise, which Adam's
    # first steps amplify in the weights: lr * sign(g) flips where g is near 0).
    single = train(tiny(pairs, tmp_path / "single", steps=3, batch_size=2, checkpoint_every=100, log_every=1))
    ddp_stats, single_stats = ([json.loads(line) for line in (folder / "stats.jsonl").read_text().splitlines()]
                               for folder in (run_dir, single.run_dir))
    losses = sorted(k for k in ddp_stats[0] if k.startswith("loss/"))
    assert len(losses) == 5 and [s["step"] for s in ddp_stats] == [1, 2, 3]
    for step, (a, b) in enumerate(zip(ddp_stats, single_stats), 1):
        np.testing.assert_allclose([a[k] for k in losses], [b[k] for k in losses], rtol=1e-6 if step == 1 else 1e-3)


# ---- the proof that it learns ----

def make_teacher_pairs(folder, count: int, val_count: int):
    """Pairs from the fixture teacher blended with a toon stand-in whose low-resolution ToRGB layers
    mix the colour channels: below 32 px the toon's rendering differs visibly from the real one."""
    base = FIXTURES / "nvlabs_sg2ada_32.pkl"
    toon = load_generator(base)
    mix = torch.tensor([[0.2, 0.9, 0.0], [0.0, 0.3, 0.8], [0.9, 0.0, 0.3]])
    with torch.no_grad():
        for key, p in toon.state_dict().items():
            if key.endswith(("torgb.weight", "torgb.bias")):
                p.copy_(torch.einsum("oi,i...->o...", mix, p))
    save_generator(toon, folder / "toon.safetensors")
    blend_files(base, folder / "toon.safetensors", BlendConfig(swap_res=16), folder / "blended.safetensors")
    generate_pairs(PairsConfig(base=base, blended=folder / "blended.safetensors", output=folder / "pairs", count=count,
                               val_count=val_count, res=32, device="cpu"))
    return folder / "pairs"


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A lite student trained for 300 steps on teacher pairs at 32 px: (pair folder, run folder)."""
    folder = tmp_path_factory.mktemp("learned")
    pairs = make_teacher_pairs(folder, count=64, val_count=16)
    cfg = TrainConfig(pairs=pairs, output=folder / "runs", preset="lite", res=32, steps=300, batch_size=8, lr=1e-3,
                      gan=False, vgg=False, l1_weight=1.0, workers=0, log_every=50, sample_every=300)
    return pairs, train(cfg).run_dir


def test_student_learns_the_teacher(learned):
    pairs, run_dir = learned
    torch.manual_seed(TrainConfig.seed)
    untrained = evaluate_student(build_generator("lite"), pairs / "val", 32)
    trained = evaluate_student(load_student(run_dir / "student-ema.pt")[0], pairs / "val", 32)
    identity = trained["identity"]["psnr"]
    print(f"held-out PSNR: untrained {untrained['student']['psnr']:.2f} dB, identity {identity:.2f} dB, "
          f"trained {trained['student']['psnr']:.2f} dB (SSIM {trained['student']['ssim']:.3f})")
    assert trained["student"]["psnr"] > identity + 1
    assert trained["student"]["psnr"] > untrained["student"]["psnr"] + 3
    assert trained["student"]["ssim"] > untrained["student"]["ssim"] + 0.2


def test_int8_export_of_the_trained_student_keeps_what_it_learned(learned, tmp_path):
    pairs, run_dir = learned
    out = tmp_path / "student-int8.onnx"
    report = export_student(ExportConfig(student=run_dir / "student-ema.pt", output=out, int8=True,
                                         calibration=(pairs,)))
    # 32 of the 80 real images, spread evenly: 26 calibrate, 6 check (with the bundled portrait).
    assert len(report["psnr"]) == 1 + 32 // 5 and min(report["psnr"].values()) >= 30
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "DepthToSpace"} <= ops and "ConvTranspose" not in ops
    assert read_model_info(out).precision == "int8"
    # Against the teacher's toons on held-out pairs, int8 scores what float32 scores.
    real, toon = [np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((pairs / "val" / side).iterdir())])
                  for side in ("real", "toon")]
    G = load_student(run_dir / "student-ema.pt")[0]
    with torch.no_grad():
        fp32 = nchw_to_hwc(G(torch.from_numpy(hwc_to_nchw(real))).numpy())
    int8 = Toonifier(out, provider="cpu").run(real)
    scores = {name: 10 * np.log10(255 ** 2 / np.mean((got.astype(float) - toon) ** 2))
              for name, got in (("fp32", fp32), ("int8", int8))}
    assert scores["int8"] == pytest.approx(scores["fp32"], abs=0.3)


