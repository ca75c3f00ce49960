"""Style control: blends at a strength, pair sets with several styles and strengths, the
conditioned student that learns them, its export (conditioned and folded) and its evaluation."""
import json

import numpy as np
import onnx
import pytest
import torch

from distill.blend import BlendConfig, at_strength, blend_generators, strength_weights
from distill.checkpoint import load_generator
from distill.evaluate import EvalConfig, evaluate_file
from distill.export import ExportConfig, export_student
from distill.pairs import (PairsConfig, PairsError, SampleConfig, generate_pairs, pair_condition, read_manifest,
                           sample_grid, synthesize, write_sample_grid)
from distill.runs import load_student
from distill.train import TrainConfig, train
from runtime.common import UsageError
from runtime.engine import Toonifier, read_model_info
from runtime.images import grid_margins, hwc_to_nchw, nchw_to_hwc, read_image
from tests.helpers import BASE, cli, make_recoloured_toon, make_unclipped_base

STYLES = ("gbr", "brg")
MIXES = (((0.2, 0.9, 0.0), (0.0, 0.3, 0.8), (0.9, 0.0, 0.3)),      # red from green, green from blue, ...
         ((0.3, 0.0, 0.9), (0.9, 0.2, 0.0), (0.0, 0.8, 0.3)))      # red from blue, green from red, ...


def make_styles(folder):
    """Two styles on a base whose pixels do not clip (make_unclipped_base, written beside them):
    the base's colours mixed two ways at every resolution, each used whole (a blend that takes
    every layer from its toon). A tiny student learns them in a few hundred steps, since each toon
    pixel follows from its photo pixel. A blend by resolution would recolour only the image's coarse
    or fine part, which a photo does not tell apart; a student can only guess that part, and its
    guess falls short of full strength."""
    base = make_unclipped_base(folder / "base.safetensors")
    for name, mix in zip(STYLES, MIXES):
        make_recoloured_toon(folder / f"{name}.safetensors", mix, base)
    return tuple((name, folder / f"{name}.safetensors") for name in STYLES)


def base_of(styles):
    return styles[0][1].with_name("base.safetensors")


def styled_pairs(styles, out, **kwargs):
    settings = dict(base=base_of(styles), output=out, count=4, res=32, device="cpu", styles=styles,
                    strengths=(0.0, 1.0))
    return generate_pairs(PairsConfig(**{**settings, **kwargs}))


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    return make_styles(tmp_path_factory.mktemp("styles"))


def test_strength_scales_every_toon_share_and_reaches_the_base_at_zero():
    assert strength_weights({"a": 0.0, "b": 0.25, "c": 1.0}, 0.5) == {"a": 0.5, "b": 0.625, "c": 1.0}
    assert strength_weights({"b": 0.3}, 1.0) == {"b": 0.3}        # exactly the blend at 1
    base, blend = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 2.0])}
    assert torch.equal(at_strength(base, blend, 0.25)["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(at_strength(base, blend, 0.0)["w"], base["w"])
    base_G, toon_G = load_generator(BASE), load_generator(BASE)
    with torch.no_grad():
        for p in toon_G.parameters():
            p.add_(0.1)
    cfg = BlendConfig(swap_res=8, width=0.7)
    half = blend_generators(base_G, toon_G, cfg, strength=0.5).state_dict()
    interpolated = at_strength(base_G.state_dict(), blend_generators(base_G, toon_G, cfg).state_dict(), 0.5)
    assert max(float((half[k] - interpolated[k]).abs().max()) for k in half) < 1e-6   # a blend is linear
    assert all(torch.equal(v, base_G.state_dict()[k])
               for k, v in blend_generators(base_G, toon_G, cfg, strength=0.0).state_dict().items())


def test_each_pair_draws_its_style_and_strength_from_seed_and_index(styles, tmp_path):
    styled_pairs(styles, tmp_path / "whole", save_latents=True)
    for k in (1, 0):
        styled_pairs(styles, tmp_path / "sharded", save_latents=True, shard=(k, 2))
    entries = read_manifest(tmp_path / "whole")
    assert entries == read_manifest(tmp_path / "sharded")
    for name in ("real", "toon"):
        for e in entries:
            assert (tmp_path / "whole" / e[name]).read_bytes() == (tmp_path / "sharded" / e[name]).read_bytes()
    for e in entries:
        style, strength = pair_condition(0, e["index"], 2, (0.0, 1.0))
        assert (e["style"], e["style_index"], e["strength"]) == (STYLES[style], style, strength)
    assert len({e["style"] for e in entries}) == 2 and len({e["strength"] for e in entries}) == 4
    # The toon is the base and the style's blend interpolated at the pair's strength, from the same w+.
    base = load_generator(base_of(styles))
    e = entries[0]
    teacher = load_generator(base_of(styles))
    teacher.load_state_dict(at_strength(base.state_dict(), load_generator(styles[e["style_index"]][1]).state_dict(),
                                        e["strength"]))
    w = torch.from_numpy(np.load(tmp_path / "whole" / e["latent"]))[None]
    np.testing.assert_array_equal(nchw_to_hwc(synthesize(teacher, w).numpy())[0],
                                  read_image(tmp_path / "whole" / e["toon"])[0])
    meta = json.loads((tmp_path / "whole" / "pairs.json").read_text())
    assert [s["name"] for s in meta["styles"]] == list(STYLES) and meta["strengths"] == [0.0, 1.0]
    with pytest.raises(PairsError) as err:
        styled_pairs(styles, tmp_path / "whole", save_latents=True, strengths=(0.5, 1.0))
    assert err.value.reason == "this pair set was made with strengths = [0.0, 1.0]; this run asks for [0.5, 1.0]"


@pytest.mark.parametrize("kwargs, reason", [
    ({"styles": ()}, "give either --blended (one toon teacher) or --style NAME=BLENDED (one or more)"),
    ({"strengths": (0.8, 0.2)}, "strengths must be LO:HI with 0 <= LO <= HI <= 1, got 0.8:0.2"),
])
def test_pairs_config_refuses_styles_that_make_no_sense(styles, tmp_path, kwargs, reason):
    with pytest.raises(PairsError) as e:
        PairsConfig(**{**dict(base=base_of(styles), output=tmp_path, count=1, styles=styles), **kwargs})
    assert e.value.reason == reason


def test_sample_shows_a_strength_sweep_that_starts_at_the_base(styles, tmp_path):
    out = write_sample_grid(SampleConfig(networks=(base_of(styles), styles[0][1]), output=tmp_path / "sweep.png", seeds=(3,),
                                         strengths=(0.0, 1.0), device="cpu"))
    # Strength 0 is the base's own image, strength 1 the blend's (the rows' labels are to the left).
    expected = sample_grid([load_generator(base_of(styles)), load_generator(styles[0][1])], [3], 0.7, torch.device("cpu"))
    name = styles[0][1].stem
    left, top = grid_margins(row_labels=[f"{name} s=0", f"{name} s=1"], col_labels=["seed 3"])
    got = read_image(out)[0]
    np.testing.assert_array_equal(got[top:top + expected.shape[0], left:left + expected.shape[1]], expected)


# ---- the conditioned student ----

@pytest.fixture(scope="module")
def learned(styles, tmp_path_factory):
    """A conditioned lite student trained briefly (STEPS steps) on 2 styles x strengths in [0, 1]
    at 32 px: (pair folder, student file)."""
    folder = tmp_path_factory.mktemp("conditioned")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # tiny convolutions: threads on a shared 2-core machine only wait for each other
    try:
        styled_pairs(styles, folder / "pairs", count=256, val_count=8, save_latents=True)
        cfg = TrainConfig(pairs=folder / "pairs", output=folder / "runs", preset="lite", res=32, steps=STEPS,
                          batch_size=8, lr=2e-3, decay_start=0.8, gan=False, vgg=False, l1_weight=1.0, augment=False,
                          workers=0, log_every=100, sample_every=STEPS)
        return folder / "pairs", train(cfg).run_dir / "student-ema.pt"
    finally:
        torch.set_num_threads(threads)


STEPS = 400


def psnr(a, b):
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


MARGIN_DB = 2.0   # how much closer (PSNR) the student must be to the teacher asked for than to a wrong one


def test_conditioned_student_follows_style_and_strength(styles, learned):
    """On held-out latents, at strengths 0, 0.5 and 1 of both styles: the student is closer to
    teacher(style, s) than to teacher(other style, s) (s > 0: at 0 both are the base), and than
    to teacher(style, s') for every |s - s'| >= 0.5, each by MARGIN_DB. At strength 0 its output is
    closer to its input than at 1."""
    pairs, student = learned
    model, info = load_student(student)
    assert info.styles == STYLES and info.config.styles == 2
    base = load_generator(base_of(styles))
    blends = [load_generator(path).state_dict() for _, path in styles]
    val = read_manifest(pairs / "val")
    w = torch.from_numpy(np.stack([np.load(pairs / "val" / e["latent"]) for e in val]))
    real = np.stack([read_image(pairs / "val" / e["real"])[0] for e in val])

    def teacher(style, strength):
        G = load_generator(base_of(styles))
        G.load_state_dict(at_strength(base.state_dict(), blends[style], strength))
        return nchw_to_hwc(synthesize(G, w).numpy())

    def student_at(style, strength):
        n = len(real)
        with torch.no_grad():
            out = model(torch.from_numpy(hwc_to_nchw(real)), torch.full((n,), style), torch.full((n,), strength))
        return nchw_to_hwc(out.numpy())

    grid = (0.0, 0.5, 1.0)
    teachers = {(k, s): teacher(k, s) for k in (0, 1) for s in grid}
    for k in (0, 1):
        for s in grid:
            out = student_at(k, s)
            own = psnr(out, teachers[k, s])
            wrong = {f"style {STYLES[1 - k]}": psnr(out, teachers[1 - k, s])} if s > 0 else {}
            wrong |= {f"strength {s2}": psnr(out, teachers[k, s2]) for s2 in grid if abs(s - s2) >= 0.5}
            print(f"{STYLES[k]} at {s}: {own:.2f} dB to its teacher; " + ", ".join(f"{v:.2f} dB to {name}"
                                                                              for name, v in wrong.items()))
            for name, score in wrong.items():
                assert own > score + MARGIN_DB, (STYLES[k], s, name)
            if s == 0.0:
                at_zero = psnr(out, real)
            if s == 1.0:
                assert at_zero > psnr(out, real) + MARGIN_DB


def test_folded_export_equals_the_conditioned_export(learned, tmp_path):
    pairs, student = learned
    conditioned = export_student(ExportConfig(student=student, output=tmp_path / "styles.onnx"))
    folded = export_student(ExportConfig(student=student, output=tmp_path / "folded.onnx", style="brg",
                                         strength=0.6))
    assert max(conditioned["parity"].values()) < 1e-4 and max(folded["parity"].values()) < 1e-4
    graph = onnx.load(str(tmp_path / "styles.onnx"))
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.graph.input] == [
        ("input", onnx.TensorProto.FLOAT), ("style", onnx.TensorProto.INT64), ("strength", onnx.TensorProto.FLOAT)]
    info, folded_info = read_model_info(tmp_path / "styles.onnx"), read_model_info(tmp_path / "folded.onnx")
    assert info.style_names == STYLES and info.default_strength == 1.0
    assert folded_info.style_names == () and folded_info.extra == {"style": "brg", "strength": "0.6"}
    assert [i.name for i in onnx.load(str(tmp_path / "folded.onnx")).graph.input] == ["input"]
    x = hwc_to_nchw(np.stack([read_image(p)[0] for p in sorted((pairs / "val" / "real").iterdir())]))
    a = Toonifier(tmp_path / "styles.onnx", "cpu").session.run(
        ["output"], {"input": x, "style": np.ones(len(x), np.int64), "strength": np.full(len(x), 0.6, np.float32)})[0]
    b = Toonifier(tmp_path / "folded.onnx", "cpu").session.run(["output"], {"input": x})[0]
    assert np.abs(a - b).max() < 1e-4
    u8 = nchw_to_hwc(x)
    assert np.array_equal(Toonifier(tmp_path / "styles.onnx", "cpu").run(u8, style="brg", strength=0.6),
                          Toonifier(tmp_path / "folded.onnx", "cpu").run(u8, style="brg", strength=0.6)) or \
        np.abs(Toonifier(tmp_path / "styles.onnx", "cpu").run(u8, style="brg", strength=0.6).astype(int)
               - Toonifier(tmp_path / "folded.onnx", "cpu").run(u8).astype(int)).max() <= 1


def test_eval_reports_each_style_and_strength(learned, tmp_path):
    pairs, student = learned
    report = evaluate_file(EvalConfig(student=student, pairs=pairs / "val", output=tmp_path / "report.json"))
    conditions = report["conditions"]
    assert sum(c["count"] for c in conditions) == report["count"] == 8
    manifest = read_manifest(pairs / "val")
    assert {c["style"] for c in conditions} == {e["style"] for e in manifest}
    assert all(set(c["student"]) >= {"psnr", "ssim"} and 0 <= c["strength"] <= 1 for c in conditions)
    assert json.loads((tmp_path / "report.json").read_text())["conditions"] == conditions


def test_export_refuses_styles_a_student_does_not_have(tmp_path):
    from distill.runs import StudentInfo, save_student
    from distill.translator import build_generator
    from runtime.common import UsageError
    from tests.helpers import make_student
    plain = make_student(tmp_path / "plain.pt")
    G = build_generator("lite", styles=2)
    save_student(G, tmp_path / "styles.pt", StudentInfo(G.cfg, "lite", 32, styles=STYLES))
    cases = [(plain, {"style": "gbr"}, "--style and --strength are for a conditioned student (trained on pairs "
                                          "with styles); this one has a single style"),
             (tmp_path / "styles.pt", {"style": "pixar"}, "no style 'pixar' in this student"),
             (tmp_path / "styles.pt", {"strength": 0.5}, "--strength is folded in with a style"),
             (tmp_path / "styles.pt", {"style": "gbr", "strength": 1.5}, "--strength must lie in [0, 1], got 1.5"),
             (tmp_path / "styles.pt", {"int8": True}, "--int8 calibrates a one-input model: fold a style into it")]
    for student, kwargs, reason in cases:
        with pytest.raises(UsageError) as e:
            export_student(ExportConfig(student=student, output=tmp_path / "out.onnx", **kwargs))
        assert e.value.reason == reason
    assert not (tmp_path / "out.onnx").exists()


def test_export_writes_the_default_strength_that_apps_use_when_none_is_given(learned, tmp_path, capsys):
    pairs, student = learned
    out = tmp_path / "styles.onnx"
    report = export_student(ExportConfig(student=student, output=out, default_strength=0.3))
    assert max(report["parity"].values()) < 1e-4
    assert read_model_info(out).default_strength == 0.3
    u8 = np.stack([read_image(p)[0] for p in sorted((pairs / "val" / "real").iterdir())])
    t = Toonifier(out, "cpu")
    at_default = t.run(u8, style="gbr")
    np.testing.assert_array_equal(at_default, t.run(u8, style="gbr", strength=0.3))
    assert not np.array_equal(at_default, t.run(u8, style="gbr", strength=1.0))
    # The command line: no --strength is the model's default; `info` lists it.
    photo = sorted((pairs / "val" / "real").iterdir())[0]
    code, _, err = cli(capsys, photo, "--no-align", "-m", out, "--style", "gbr", "-o", tmp_path / "toon.png")
    assert code == 0, err
    np.testing.assert_array_equal(read_image(tmp_path / "toon.png")[0], at_default[0])
    code, text, _ = cli(capsys, "info", out)
    cells = [line.split("│") for line in text.splitlines() if line.count("│") == 3]
    rows = {c[1].strip(): c[2].strip() for c in cells}
    assert code == 0 and rows["default_strength"] == "0.3"
    # Folding a style without --strength folds the default strength in.
    export_student(ExportConfig(student=student, output=tmp_path / "folded.onnx", style="gbr", default_strength=0.3))
    assert read_model_info(tmp_path / "folded.onnx").extra["strength"] == "0.3"
    with pytest.raises(UsageError) as e:
        export_student(ExportConfig(student=student, output=tmp_path / "bad.onnx", default_strength=1.5))
    assert e.value.reason == "--default-strength must lie in [0, 1], got 1.5"
    assert not (tmp_path / "bad.onnx").exists()


def test_a_conditioned_gan_run_shows_its_discriminator_the_condition_and_resumes_exactly(styles, tmp_path):
    from distill.translator import MultiscaleDiscriminator, condition_planes
    styled_pairs(styles, tmp_path / "pairs", count=8, val_count=2)

    def cfg(out):
        return TrainConfig(pairs=tmp_path / "pairs", output=out, res=32, steps=6, batch_size=2, gan=True, vgg=False,
                           l1_weight=1.0, ndf=8, workers=0, log_every=2, sample_every=3, checkpoint_every=2)

    straight = train(cfg(tmp_path / "straight")).run_dir
    first = train(cfg(tmp_path / "resumed"), stop_at=3)
    resumed = train(cfg(tmp_path / "resumed"), resume=first.run_dir).run_dir
    a, b = (torch.load(run / "checkpoints" / "latest.pt", weights_only=True) for run in (straight, resumed))
    for key in ("G", "G_ema", "D"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for key in ("opt_G", "opt_D"):
        for i, s in a[key]["state"].items():
            assert all(torch.equal(v, b[key]["state"][i][name]) for name, v in s.items()), key
    # D takes source, 3 planes of condition (one-hot style times strength, strength) and the image.
    D = MultiscaleDiscriminator(6 + 3, ndf=8)
    D.load_state_dict(a["D"])
    x = torch.from_numpy(hwc_to_nchw(np.stack([read_image(p)[0] for p in sorted((tmp_path / "pairs" / "val" / "real")
                                                                                 .iterdir())])))
    planes = condition_planes(x, torch.tensor([0, 1]), torch.tensor([1.0, 0.5]), 2)
    assert planes[:, :, 5, 7].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.5, 0.5]]

    def judged(style, strength):
        n = len(x)
        with torch.no_grad():
            c = condition_planes(x, torch.full((n,), style), torch.full((n,), strength), 2)
            return D(torch.cat([x, c, x], 1))[0][-1]
    assert not torch.allclose(judged(0, 1.0), judged(1, 1.0)) and not torch.allclose(judged(0, 1.0), judged(0, 0.5))
    assert torch.equal(judged(0, 0.0), judged(1, 0.0))        # at strength 0 every style asks for the photo
