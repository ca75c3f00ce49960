"""load_generator against the reference fixtures, the safetensors round trip, and every refusal.

Ground truth: ../shared/fixtures/stylegan2 (see its README): outputs computed by the official
NVlabs, rosinality and NVlabs-legacy (TF) code for the same files.
"""
import argparse
import hashlib
import io
import os
import pickle
import pickletools
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from distill.checkpoint import CheckpointError, file_sha256, load_generator, read_metadata, save_generator
from tests.helpers import fake_tf_network_module

FORMATS = {
    "nvlabs": ("nvlabs_sg2ada_32.pkl", "nvlabs_sg2ada_32_expected.npz"),
    "rosinality": ("rosinality_32.pt", "rosinality_32_expected.npz"),
    "tf": ("tf_stylegan2_32.pkl", "tf_stylegan2_32_expected.npz"),
}
TOLERANCE = 1e-4


@torch.no_grad()
def reference_outputs(G, z: torch.Tensor) -> dict:
    """The arrays the fixtures' README lists, computed by our Generator."""
    ws1, ws07 = G.mapping(z), G.mapping(z, truncation_psi=0.7)
    return {"ws_psi1": ws1, "ws_psi07": ws07, "img_psi1_const": G.synthesis(ws1, noise_mode="const"),
            "img_psi07_const": G.synthesis(ws07, noise_mode="const"),
            "img_psi1_nonoise": G.synthesis(ws1, noise_mode="none"), "latent_avg": G.mapping.w_avg}


def assert_reproduces(G, expected_npz) -> None:
    expected = np.load(expected_npz)
    got = reference_outputs(G, torch.from_numpy(expected["z"]))
    compared = [k for k in expected.files if k != "z"]
    assert compared and set(compared) <= set(got)
    for key in compared:
        err = np.abs(got[key].numpy() - expected[key]).max()
        assert err <= TOLERANCE, f"{key}: max abs difference {err:.2e}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_reproduces_every_reference_array(fixtures_dir, fmt):
    ckpt, expected = FORMATS[fmt]
    G = load_generator(fixtures_dir / ckpt)
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    assert_reproduces(G, fixtures_dir / expected)


@torch.no_grad()
def test_network_G_is_the_training_generator_not_G_ema(fixtures_dir):
    path = fixtures_dir / FORMATS["nvlabs"][0]
    ema, raw = load_generator(path), load_generator(path, network="G")
    z = torch.randn([2, ema.z_dim], generator=torch.Generator().manual_seed(0))
    assert (ema(z) - raw(z)).abs().max() > 1e-2
    assert not torch.equal(ema.mapping.fc0.weight, raw.mapping.fc0.weight)
    # In the TF fixture G equals Gs on purpose; rosinality's fixture has no 'g'.
    tf = fixtures_dir / FORMATS["tf"][0]
    assert torch.equal(load_generator(tf, network="G")(z), load_generator(tf)(z))
    with pytest.raises(CheckpointError, match=r"no network 'G' \(rosinality 'g'\) in it \(found: g_ema, latent_avg\)"):
        load_generator(fixtures_dir / FORMATS["rosinality"][0], network="G")


@pytest.mark.parametrize("fmt", FORMATS)
@torch.no_grad()
def test_safetensors_round_trip(fixtures_dir, tmp_path, fmt):
    G = load_generator(fixtures_dir / FORMATS[fmt][0])
    out = tmp_path / "g.safetensors"
    save_generator(G, out, metadata={"source": {"sha256": "ab12"}, "swap_res": 16})
    assert read_metadata(out) == {"init_kwargs": G.init_kwargs, "source": {"sha256": "ab12"}, "swap_res": 16}
    G2 = load_generator(out)
    assert G2.init_kwargs == G.init_kwargs
    for key, value in G.state_dict().items():
        assert torch.equal(value, G2.state_dict()[key]), key
    assert_reproduces(G2, fixtures_dir / FORMATS[fmt][1])
    assert file_sha256(out) == hashlib.sha256(out.read_bytes()).hexdigest()


def to_protocol3_numpy1(data: bytes) -> bytes:
    """Rewrite a protocol-4 pickle the way numpy-1.x / protocol-3 writers spelled it: GLOBAL instead
    of STACK_GLOBAL, BINPUT instead of MEMOIZE, no frames, sets via builtins.set,
    `numpy.core.multiarray` for `numpy._core.multiarray`."""
    out, memo, strings, recent = [b"\x80\x03"], 0, {}, []
    ops = list(pickletools.genops(data))
    for (op, arg, pos), (_, _, end) in zip(ops, ops[1:] + [(None, None, len(data))]):
        if op.name == "PROTO" or op.name == "FRAME":
            continue
        if op.name == "MEMOIZE":
            out.append(b"q" + bytes([memo]) if memo < 256 else b"r" + memo.to_bytes(4, "little"))
            if recent and recent[-1][1] == pos:  # the string just pushed may be fetched again by BINGET
                strings[memo] = recent[-1][0]
            memo += 1
        elif op.name == "SHORT_BINUNICODE":
            raw = arg.replace("numpy._core", "numpy.core").encode()
            out.append(b"X" + len(raw).to_bytes(4, "little") + raw)
            recent.append((arg, end))
        elif op.name in ("BINGET", "LONG_BINGET"):
            out.append(data[pos:end])
            if arg in strings:
                recent.append((strings[arg], None))
        elif op.name == "STACK_GLOBAL":
            module, name = recent[-2][0].replace("numpy._core", "numpy.core"), recent[-1][0]
            out.append(b"00c" + f"{module}\n{name}\n".encode())  # POP the two strings, then GLOBAL
        elif op.name == "EMPTY_SET":
            out.append(b"cbuiltins\nset\n)R")
        else:
            out.append(data[pos:end])
    return b"".join(out)


def test_reads_protocol_3_pickles_with_numpy_1_spelling(fixtures_dir, tmp_path):
    ckpt, expected = FORMATS["nvlabs"]
    old = to_protocol3_numpy1((fixtures_dir / ckpt).read_bytes())
    assert b"numpy.core.multiarray\nscalar" in old and b"numpy._core" not in old
    assert next(pickletools.genops(old))[1] == 3
    (tmp_path / "old.pkl").write_bytes(old)
    assert_reproduces(load_generator(tmp_path / "old.pkl"), fixtures_dir / expected)


class Payload:
    """A pickle that runs `call(*args)` when loaded by an ordinary unpickler."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call, qualname", [(os.system, f"{os.system.__module__}.system"),
                                            (eval, "builtins.eval"), (subprocess.Popen, "subprocess.Popen")])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, call, qualname):
    marker = tmp_path / "pwned"
    args = {os.system: f"touch {marker}", eval: f"open({str(marker)!r}, 'w')", subprocess.Popen: ["touch", str(marker)]}
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": Payload(call, args[call])}, protocol=4))
    with pytest.raises(CheckpointError, match=f"refused to load: the pickle asks for `{qualname}`"):
        load_generator(evil)
    assert not marker.exists()


def test_payload_hidden_in_a_tensor_storage_is_refused(tmp_path):
    # NVlabs pickles rebuild storages from torch.save blobs; a blob can carry a payload of its own.
    marker, blob = tmp_path / "pwned", io.BytesIO()
    torch.save(Payload(os.system, f"touch {marker}"), blob, _use_new_zipfile_serialization=False)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": Payload(torch.storage._load_from_bytes, blob.getvalue())}))
    with pytest.raises(CheckpointError, match=f"the pickle asks for `{os.system.__module__}.system`"):
        load_generator(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_malicious_torch_file_is_refused(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"g_ema": Payload(os.system, f"touch {marker}")}, evil)
    with pytest.raises(CheckpointError, match=f"refused to load: the torch file asks for `{os.system.__module__}.system`"):
        load_generator(evil)
    assert not marker.exists()


def test_damaged_and_unknown_files_are_named(fixtures_dir, tmp_path):
    def error(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            load_generator(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)
        return str(e.value)

    nvlabs = (fixtures_dir / FORMATS["nvlabs"][0]).read_bytes()
    assert "truncated pickle" in error("half.pkl", nvlabs[: len(nvlabs) // 2])
    rosinality = (fixtures_dir / FORMATS["rosinality"][0]).read_bytes()
    assert "damaged torch file" in error("half.pt", rosinality[: len(rosinality) - 1000])
    assert "not a StyleGAN2 checkpoint: unrecognised content" in error("noise.bin", np.random.default_rng(0).bytes(4096))
    assert "not a StyleGAN2 checkpoint: a pickled list" in error("list.pkl", pickle.dumps([1, 2, 3]))
    assert "not a StyleGAN2 checkpoint: a pickled dict with keys a, b" in error("dict.pkl", pickle.dumps({"a": 1, "b": 2}))
    with pytest.raises(CheckpointError, match=r"no such file\n  hint: check the path"):
        load_generator(tmp_path / "missing.pkl")


def test_wrong_network_names_what_is_there(fixtures_dir):
    path = fixtures_dir / FORMATS["nvlabs"][0]
    with pytest.raises(CheckpointError, match=r"no network 'Gs' in it \(found: G, D, G_ema\)"):
        load_generator(path, network="Gs")
    with pytest.raises(CheckpointError, match="'D' is a Discriminator, not a StyleGAN2 Generator"):
        load_generator(path, network="D")


def test_tensor_that_does_not_fit_is_named_with_both_shapes(fixtures_dir, tmp_path):
    ckpt = torch.load(fixtures_dir / FORMATS["rosinality"][0], weights_only=True)
    ckpt["g_ema"]["convs.3.conv.weight"] = torch.zeros([1, 32, 16, 3, 3])
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"tensor 'convs\.3\.conv\.weight' \(-> synthesis\.b16\.conv1\.weight\) "
                                              r"does not fit the configuration: expected \[32, 32, 3, 3\], found \[32, 16, 3, 3\]"):
        load_generator(tmp_path / "bad.pt")
    del ckpt["g_ema"]["noises.noise_3"]
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"tensor 'noises\.noise_3' \(-> synthesis\.b16\.conv0\.noise_const\) is missing"):
        load_generator(tmp_path / "bad.pt")


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="a safetensors file without toonify-fast metadata"):
        load_generator(tmp_path / "other.safetensors")


@torch.no_grad()
def test_rosinality_training_checkpoint_with_args_and_no_latent_avg(fixtures_dir, tmp_path):
    ckpt = torch.load(fixtures_dir / FORMATS["rosinality"][0], weights_only=True)
    sd = ckpt["g_ema"]
    train = {"g": {k: v * 1.5 if k.endswith("modulation.weight") else v for k, v in sd.items()}, "g_ema": sd,
             "d": {"convs.0.0.weight": torch.zeros(1)}, "args": argparse.Namespace(size=32, n_mlp=4)}
    torch.save(train, tmp_path / "train.pt")
    assert zipfile.is_zipfile(tmp_path / "train.pt")
    G = load_generator(tmp_path / "train.pt")
    z = torch.randn([4096, G.z_dim], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(G.mapping.w_avg, G.mapping(z)[:, 0].mean(0))  # estimated: the file has none
    expected = np.load(fixtures_dir / FORMATS["rosinality"][1])
    assert np.abs(G.synthesis(G.mapping(torch.from_numpy(expected["z"]))).numpy() - expected["img_psi1_const"]).max() <= TOLERANCE
    assert not torch.equal(load_generator(tmp_path / "train.pt", network="G").synthesis.b8.conv0.affine.weight,
                           G.synthesis.b8.conv0.affine.weight)


def test_real_tf_pickles_extra_lod_variable_is_ignored(fixtures_dir, tmp_path, monkeypatch):
    # Official TF StyleGAN2 pickles also hold G_main's `lod` scalar (the fixture leaves it out).
    fake_tf_network_module(monkeypatch)
    ckpt, expected = FORMATS["tf"]
    G, D, Gs = pickle.loads((fixtures_dir / ckpt).read_bytes())  # our own fixture: a plain load is safe
    Gs.state["variables"].insert(0, ("lod", np.float32(0)))
    (tmp_path / "tf.pkl").write_bytes(pickle.dumps((G, D, Gs), protocol=3))
    assert_reproduces(load_generator(tmp_path / "tf.pkl"), fixtures_dir / expected)
