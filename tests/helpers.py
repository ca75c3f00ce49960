"""Builders the tests share: tiny ONNX students, teachers, pair folders, VGG weights, a smoothing
driver, and outputs that are not regular files (a character device, a named pipe read by a thread).

    path = build_model(tmp_path / "m.onnx", "invert", resolution=32)   # toon = 255 - photo, exactly
    base, toon = make_toon(tmp_path / "toon.safetensors")             # the 32 px fixture and a perturbed copy

The ONNX builders use onnx.helper (no torch), so runtime tests stay fast and exact; the torch
builders import torch only when called.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import pytest
from PIL import Image

from runtime.engine import ModelInfo
from tests.conftest import FIXTURES, ROOT

BASE = FIXTURES / "nvlabs_sg2ada_32.pkl"

# What each op does to a uint8 RGB image, for the tests' expected outputs.
EXPECTED = {
    "identity": lambda u8: u8,
    "invert": lambda u8: 255 - u8,           # -x in [-1, 1] is 255 - u in uint8, exactly
    "swap_rb": lambda u8: u8[..., ::-1],     # catches any RGB/BGR confusion
}


def build_model(path: Path, op: str = "invert", resolution: int = 32, size_multiple: int = 8,
                metadata: dict[str, str] | None = None, input_name: str = "input",
                output_name: str = "output", batch: int | str = "N") -> Path:
    """Write a one-node student to `path`; `metadata` replaces the default toonify-fast metadata_props."""
    image = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, "H", "W"])
    toon = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, 3, "H", "W"])
    initializers = []
    if op == "identity":
        nodes = [helper.make_node("Identity", [input_name], [output_name])]
    elif op == "invert":
        nodes = [helper.make_node("Neg", [input_name], [output_name])]
    elif op == "swap_rb":
        weight = np.eye(3, dtype=np.float32)[::-1].reshape(3, 3, 1, 1).copy()
        initializers = [numpy_helper.from_array(weight, "swap_weight")]
        nodes = [helper.make_node("Conv", [input_name, "swap_weight"], [output_name])]
    else:
        raise ValueError(op)
    graph = helper.make_graph(nodes, f"tiny_{op}", [image], [toon], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if metadata is None:
        metadata = ModelInfo(input_name=input_name, output_name=output_name, resolution=resolution,
                             size_multiple=size_multiple, preset=f"test-{op}",
                             exported_at="2024-01-01T00:00:00+00:00", toonify_fast_version="0.1.0").to_metadata()
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    """The real entry point (runtime.cli.main) in-process -> (exit status, stdout, stderr with
    whitespace collapsed, so a message wrapped by the console reads as one line)."""
    from runtime.cli import main
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def fake_tf_network_module(monkeypatch) -> type:
    """Registers a stand-in `dnnlib.tflib.network.Network` (keeps its pickled state) so a test can
    unpickle and re-pickle the TensorFlow fixture with the plain pickle module; returns the class."""
    import sys
    import types

    class Network:
        def __setstate__(self, state):
            self.state = state

        def __getstate__(self):
            return self.state

    module = types.ModuleType("dnnlib.tflib.network")
    Network.__module__, Network.__qualname__, module.Network = module.__name__, "Network", Network
    for name in ("dnnlib", "dnnlib.tflib"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Network


def make_toon(path, seed: int = 1):
    """A stand-in toon fine-tune: the fixture generator with every synthesis weight perturbed
    (noise constants kept, as a fine-tune keeps them), saved to `path`. Returns (base, toon)."""
    import torch

    from distill.checkpoint import load_generator, save_generator
    base, toon = load_generator(BASE), load_generator(BASE)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in toon.state_dict().items():
            if key.startswith("synthesis.") and not key.endswith(".noise_const"):
                t.add_(torch.randn(t.shape, generator=g) * 0.3 * (t.std() if t.numel() > 1 else 1))
    save_generator(toon, path)
    return base, toon


def make_student(path: Path, res: int = 32, perturb: float = 0.03, seed: int = 0) -> Path:
    """A lite student file at `res` px like `distill train` writes, its weights moved off their
    initial values (a trained student's norms and biases are not at theirs), teachers 'a'*64, 'b'*64."""
    import torch

    from distill.runs import StudentInfo, save_student
    from distill.translator import PRESETS, build_generator
    torch.manual_seed(seed)
    G = build_generator("lite")
    with torch.no_grad():
        for p in G.parameters():
            p.add_(perturb * torch.randn_like(p))
    save_student(G, path, StudentInfo(PRESETS["lite"], "lite", res, teacher_base_sha256="a" * 64,
                                      teacher_blended_sha256="b" * 64))
    return path


def fake_vgg_state(arch: str) -> dict[str, torch.Tensor]:
    """A TEST FIXTURE: random weights in torchvision's VGG state dict layout (features + classifier)."""
    import torch

    from distill.losses import VGG_PLANS
    g = torch.Generator().manual_seed(0)
    state, index, channels = {}, 0, 3
    for item in VGG_PLANS[arch]:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3, generator=g) * (2 / (9 * channels)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(item, generator=g) * 0.1
        index, channels = index + 2, item
    state["classifier.0.weight"] = torch.zeros(4, 4)  # present in real files, ignored
    return state


def make_pair_folder(root, count=8, val=4, res=32):
    """Random photos and their negatives as toons, with a pairs.json naming two teacher hashes."""
    rng = np.random.default_rng(0)
    for split, n in ((root, count), (root / "val", val)):
        for sub in ("real", "toon"):
            (split / sub).mkdir(parents=True)
        for i in range(n):
            real = rng.integers(0, 256, (res, res, 3), dtype=np.uint8)
            Image.fromarray(real).save(split / "real" / f"{i:06d}.png")
            Image.fromarray(255 - real).save(split / "toon" / f"{i:06d}.png")
    (root / "pairs.json").write_text(json.dumps({"base_sha256": "b" * 64, "blended_sha256": "d" * 64}))
    return root


def smooth_track(smoother, values, track_id=0):
    """Feed one track frame by frame, reading each frame once `lookahead` later frames are in."""
    out, lag = [], smoother.lookahead
    for index, value in enumerate(values):
        smoother.add(track_id, index, value)
        if index >= lag:
            out.append(smoother.smoothed(track_id, index - lag))
    out += [smoother.smoothed(track_id, index) for index in range(max(len(values) - lag, 0), len(values))]
    return np.array(out)


NULL = os.makedev(1, 3)      # /dev/null's device number on Linux


def null_device(path: Path) -> Path:
    """A character device at `path` with /dev/null's number: writes into it vanish. Skips the test
    where mknod is not permitted (not root); the FIFO tests cover writing in place there."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, NULL)
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    return path


def is_null_device(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == NULL


def is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Callable[[], bytes]]:
    """A named pipe at `path`, read to its end by a thread; yields a function that returns what it
    received (once a writer has opened and closed it, or b"" if none did by the end of the block)."""
    os.mkfifo(path)
    received = bytearray()

    def read() -> None:
        with open(path, "rb") as f:          # blocks until a writer opens the pipe
            received.extend(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def result() -> bytes:
        reader.join(timeout=60)
        assert not reader.is_alive(), "the pipe was never closed by its writer"
        return bytes(received)

    try:
        yield result
    finally:
        if reader.is_alive():
            # Nothing wrote: open and close the write end, so the reader sees the end and stops.
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(timeout=10)


def move_temp_folder(tmp_path: Path, monkeypatch) -> Path:
    """Move the temp folder under tmp_path (for one test), so the test sees what a write in
    place left there."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# Hostile checkpoints are loaded in a child process (python -m tests.helpers FILE...) under a memory
# limit, so that a crash or a blow-up fails the test that made them, not pytest.
MARK = "@@hostile "
CHILD_AS_LIMIT = 6 << 30  # address space the child may add: a blow-up fails there, not in pytest


def _status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024


def _child(paths: list[str]) -> None:
    import gc
    import resource
    import traceback

    import torch

    from distill.checkpoint import load_generator
    from runtime.common import ToonifyError

    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + CHILD_AS_LIMIT,) * 2)
    for path in paths:
        gc.collect()
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident size
        print(MARK + json.dumps({"start": path}), flush=True)
        try:
            load_generator(path)
            status, message = "loaded", ""
        except ToonifyError as e:
            status, message = "refused", str(e)
        except BaseException:  # noqa: BLE001 - what the tests look for
            status, message = "error", traceback.format_exc()
        peak = (_status("VmHWM") - before) / 2**20
        print(MARK + json.dumps({"path": path, "status": status, "message": message, "peak_mb": peak}), flush=True)


def load_in_child(paths: list, timeout: float = 600) -> list[dict]:
    """Load each path in one child process (in order) and return one result dict per path."""
    proc = subprocess.run([sys.executable, "-m", "tests.helpers", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line[len(MARK):]) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    results = [r for r in lines if "status" in r]
    if proc.returncode != 0 or len(results) != len(paths):
        started = [r["start"] for r in lines if "start" in r]
        raise AssertionError(f"the child died (exit {proc.returncode}) while loading "
                             f"{started[-1] if started else '?'}:\n{proc.stderr[-3000:]}")
    return results


def make_toon_folder(root: Path, count: int = 48, seed: int = 1000) -> Path:
    """A fine-tuning target with a known answer: `count` renders of the 32 px NVlabs fixture (seeds
    seed..), recoloured (channels rotated: RGB -> BRG) and posterised to 4 levels, as PNGs in root."""
    import torch

    from distill.checkpoint import load_generator
    from distill.pairs import seed_latents
    from runtime.images import nchw_to_hwc, write_image
    G = load_generator(BASE)
    with torch.no_grad():
        x = G(seed_latents(list(range(seed, seed + count)), G.z_dim)).clamp(-1, 1)[:, [2, 0, 1]]
    x = torch.round((x + 1) * 1.5) / 1.5 - 1
    for i, image in enumerate(nchw_to_hwc(x.numpy())):
        write_image(Path(root) / f"{i:03d}.png", image)
    return Path(root)


def build_conditioned_model(path: Path, styles: tuple[str, ...] = ("cartoon", "ukiyoe"), default_strength: float = 1.0,
                            resolution: int = 32) -> Path:
    """A one-node-deep conditioned student: output = input * (1 - 2 * strength) + 0.5 * style, so
    strength 0 of style 0 is the identity, strength 1 the inverse, and style 1 adds 0.5 (inputs
    `input`, `style` int64 [N], `strength` float32 [N], metadata listing `styles`)."""
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    style = helper.make_tensor_value_info("style", TensorProto.INT64, ["N"])
    strength = helper.make_tensor_value_info("strength", TensorProto.FLOAT, ["N"])
    toon = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])
    initializers = [numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "per_image"),
                    numpy_helper.from_array(np.array(1.0, np.float32), "one"),
                    numpy_helper.from_array(np.array(-2.0, np.float32), "minus_two"),
                    numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Mul", ["strength", "minus_two"], ["s2"]),
             helper.make_node("Add", ["s2", "one"], ["gain"]),
             helper.make_node("Reshape", ["gain", "per_image"], ["gain4"]),
             helper.make_node("Cast", ["style"], ["style_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["style_f", "half"], ["shift"]),
             helper.make_node("Reshape", ["shift", "per_image"], ["shift4"]),
             helper.make_node("Mul", ["input", "gain4"], ["scaled"]),
             helper.make_node("Add", ["scaled", "shift4"], ["output"])]
    graph = helper.make_graph(nodes, "tiny_conditioned", [image, style, strength], [toon], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelInfo(input_name="input", output_name="output", resolution=resolution,
                                            preset="test-conditioned", styles=",".join(styles),
                                            default_strength=default_strength).to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_recoloured_toon(path, mix=((0.2, 0.9, 0.0), (0.0, 0.3, 0.8), (0.9, 0.0, 0.3)), base: Path = BASE):
    """A stand-in toon fine-tune that a tiny student learns in a few hundred steps: the generator
    `base` with every ToRGB layer's colours mixed by the 3x3 `mix`, saved to `path`. Used whole,
    the mix recolours every pixel; blended by resolution, the image's coarse or fine part.
    Returns the toon."""
    import torch

    from distill.checkpoint import load_generator, save_generator
    toon = load_generator(base)
    with torch.no_grad():
        for key, p in toon.state_dict().items():
            if key.endswith(("torgb.weight", "torgb.bias")):
                p.copy_(torch.einsum("oi,i...->o...", torch.tensor(mix), p))
    save_generator(toon, path)
    return toon


def _ddp_rank(rank: int, world: int, port: int, run, cfg, out: Path) -> None:
    import torch
    torch.set_num_threads(1)   # a spawned process: the conftest's setting does not reach it
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    result = run(cfg)
    torch.save({"G": result.G.state_dict(), "run_dir": str(result.run_dir)}, out / f"rank{rank}.pt")


def ddp_ranks(run, cfg, out: Path, world: int = 2) -> list[dict]:
    """`run(cfg)` (distill.train.train or distill.finetune.finetune) in `world` gloo processes as
    torchrun would start them -> each rank's {"G": its generator's state dict, "run_dir"}."""
    import torch
    import torch.multiprocessing as mp

    from runtime.server import free_ports
    mp.spawn(_ddp_rank, args=(world, free_ports(1)[0], run, cfg, out), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


if __name__ == "__main__":
    _child(sys.argv[1:])


def fake_inception_state(path: Path, drop: str | None = None, reshape: str | None = None) -> Path:
    """A file with the FID Inception's real names and shapes (torchvision's, plus the classifier a
    pytorch-fid file carries) and seeded random values; `drop` leaves one tensor out, `reshape`
    gives one a wrong shape."""
    import torch

    from distill.inception import expected_state
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, want in expected_state().items():
        shape = want.shape
        if key.endswith("conv.weight"):   # fan-in scaled, so 47 layers keep activations finite
            state[key] = torch.randn(shape, generator=gen) / (shape[1] * shape[2] * shape[3]) ** 0.5
        elif key.endswith(("bn.weight", "running_var")):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.01
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = state[reshape][..., :1]
    torch.save(state, path)
    return path


def make_unclipped_base(path: Path, gain: float = 0.35) -> Path:
    """The 32 px NVlabs fixture with every ToRGB layer scaled by `gain`, saved to `path`. The
    fixture is randomly initialised and most of its pixels lie outside [-1, 1], so they clip; a
    trained generator's mostly lie inside. Scaled, its images keep their content and most pixels
    stay in range, so a colour mix of them is a function of the image that a student can learn
    (a clipped pixel hides the value the mix needs)."""
    import torch

    from distill.checkpoint import load_generator, save_generator
    G = load_generator(BASE)
    with torch.no_grad():
        for key, p in G.state_dict().items():
            if key.endswith(("torgb.weight", "torgb.bias")):
                p.mul_(gain)
    save_generator(G, path)
    return Path(path)


def _ddp_failing_rank(rank: int, world: int, port: int, run, cfg, out: Path) -> None:
    from runtime.common import ToonifyError
    try:
        _ddp_rank(rank, world, port, run, cfg, out)
        error = None
    except ToonifyError as e:
        error = {"type": type(e).__name__, "reason": e.reason, "path": e.path, "hint": e.hint}
    (out / f"rank{rank}.json").write_text(json.dumps(error))


def ddp_failures(run, cfg, out: Path, world: int = 2, timeout: float = 120.0) -> list[dict | None]:
    """`run(cfg)` in `world` gloo processes as ddp_ranks starts them, for a run that may fail: each
    rank's ToonifyError as {"type", "reason", "path", "hint"} (None where it finished). Ranks still
    running after `timeout` seconds (waiting for one another) are killed, and that is an AssertionError."""
    import torch.multiprocessing as mp

    from runtime.server import free_ports
    context = mp.start_processes(_ddp_failing_rank, args=(world, free_ports(1)[0], run, cfg, out), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {world} ranks were still running after {timeout:g} s: one waits for another")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
