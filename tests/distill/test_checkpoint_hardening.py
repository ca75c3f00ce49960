"""Hostile checkpoints (issue 13): chosen pointers, memory bombs, damaged files, non-finite and
mistyped weights, code-execution payloads. Each file is made here; the loads run in a child
process (tests.helpers.load_in_child) so that a crash or a blow-up fails the test, not pytest.
"""
import io
import json
import os
import pickle
import pickletools
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from distill.blend import BlendConfig, blend_files
from distill.checkpoint import CheckpointError, load_generator, save_generator
from distill.pairs import MAX_SEEDS, SampleConfig, parse_seeds, write_sample_grid
from runtime.common import ToonifyError
from tests.helpers import fake_tf_network_module, load_in_child




# --- A pickle assembler (protocol 2 opcodes), so each hostile file is spelled out ------------------

def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def raw(data: bytes) -> bytes:
    return b"B" + len(data).to_bytes(4, "little") + data


def num(n: int) -> bytes:
    if -2**31 <= n < 2**31:
        return b"J" + n.to_bytes(4, "little", signed=True)
    body = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(body)]) + body


NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def lst(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"


def dct(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"}" + (b"(" + b"".join(k + v for k, v in pairs) + b"u" if pairs else b"")


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + b"R"


def build(obj: bytes, state: bytes) -> bytes:
    return obj + state + b"b"


def program(obj: bytes) -> bytes:
    return b"\x80\x02" + obj + b"."


def np_dtype(spec: str, state: bytes | None = None) -> bytes:
    """numpy.dtype(spec, False, True), with a BUILD state (the plain one: byte order '<')."""
    return build(call(glob("numpy", "dtype"), text(spec), FALSE, TRUE),
                 state if state is not None else tup(num(3), text("<"), NONE, NONE, NONE, num(-1), num(-1), num(0)))


def np_scalar(dtype: bytes, data: bytes) -> bytes:
    return call(glob("numpy._core.multiarray", "scalar"), dtype, raw(data))


def np_array(shape: tuple[int, ...], dtype: bytes, data: bytes) -> bytes:
    empty = call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), tup(num(0)), b"C\x01b")
    return build(empty, tup(num(1), tup(*map(num, shape)), dtype, FALSE, raw(data)))


def pointer_dtype(offset: int = 0) -> bytes:
    """A void dtype whose one field is a Python object at `offset` with flags 0: numpy would read raw
    bytes of the file as an object pointer."""
    fields = dct((text("a"), tup(np_dtype("O", tup(num(3), text("|"), NONE, NONE, NONE, num(-1), num(-1),
                                                       num(63))), num(offset))))
    return np_dtype("V8", tup(num(3), text("|"), NONE, tup(text("a")), fields, num(8), num(1), num(0)))


def persistent(class_name: str, state: bytes) -> bytes:
    """NVlabs' torch_utils.persistence._reconstruct_persistent_obj({'type': 'class', ...})."""
    meta = dct((text("type"), text("class")), (text("class_name"), text(class_name)), (text("state"), state))
    return call(glob("torch_utils.persistence", "_reconstruct_persistent_obj"), meta)


def nvlabs_generator(init_kwargs: bytes, parameters: bytes = b"}") -> bytes:
    """{'G_ema': a Generator with synthesis.b4 and the given init kwargs and parameters}."""
    b4 = persistent("SynthesisBlock", dct((text("_modules"), dct())))
    synthesis = persistent("SynthesisNetwork", dct((text("_modules"), dct((text("b4"), b4)))))
    state = dct((text("_init_kwargs"), init_kwargs), (text("_parameters"), parameters),
                (text("_modules"), dct((text("synthesis"), synthesis))))
    return program(dct((text("G_ema"), persistent("Generator", state))))


def tf_networks(variables: bytes, static_kwargs: bytes = b"}") -> bytes:
    """A (G, D, Gs) tuple of dnnlib.tflib.network.Network, each with these variables."""
    net = build(glob("dnnlib.tflib.network", "Network") + b")\x81",
                dct((text("version"), num(4)), (text("static_kwargs"), static_kwargs),
                    (text("variables"), variables), (text("components"), dct())))
    return program(b"(" + net * 3 + b"t")


NVLABS, TF, ROSINALITY = "nvlabs_sg2ada_32.pkl", "tf_stylegan2_32.pkl", "rosinality_32.pt"
PEAK_MB = 300  # the most a file under 1 MB may add to the resident memory


def refused(tmp_path, files: dict, may_load: tuple = ()) -> dict:
    """Write {name: bytes}, load each in a child; assert every one (but those in `may_load`) is refused
    with a CheckpointError within PEAK_MB, and return {name: message}."""
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    out = {}
    for name, r in zip(files, load_in_child(paths)):
        assert r["status"] == "refused" or (name in may_load and r["status"] == "loaded"), \
            f"{name}: {r['status']}\n{r['message']}"
        assert "Traceback" not in r["message"] and "MemoryError" not in r["message"], r["message"]
        assert r["peak_mb"] < PEAK_MB, f"{name}: {r['peak_mb']:.0f} MB"
        out[name] = r["message"]
    return out


def safetensors_file(header: dict | str, tensors: bytes = b"") -> bytes:
    """A safetensors file with toonify-fast metadata `header` (JSON-encoded unless a str) and a raw
    tensor section."""
    header = header if isinstance(header, str) else json.dumps(header)
    head = json.dumps({"__metadata__": {"toonify_fast": header}}).encode()
    return len(head).to_bytes(8, "little") + head + tensors


# --- Critical: the file must never choose a pointer -------------------------------------------------

def test_object_dtypes_are_refused_wherever_they_hide(tmp_path):
    plain_kwargs = [(text(k), num(v)) for k, v in (("z_dim", 8), ("c_dim", 0), ("img_resolution", 4),
                                                    ("img_channels", 3))]
    messages = refused(tmp_path, {
        "param.pkl": nvlabs_generator(dct(*plain_kwargs), dct((text("w"), np_scalar(pointer_dtype(), b"A" * 8)))),
        "kwarg.pkl": nvlabs_generator(dct((text("w_dim"), np_scalar(pointer_dtype(), b"A" * 8)), *plain_kwargs)),
        "tf_array.pkl": tf_networks(lst(tup(text("x"), np_array((2,), pointer_dtype(), b"A" * 16)))),
        "past_end.pkl": tf_networks(lst(tup(text("x"), np_array((1,), pointer_dtype(1 << 20), b"A" * 8)))),
        "object.pkl": program(np_scalar(np_dtype("O"), b"A" * 8)),
        "structured_state.pkl": program(np_scalar(np_dtype("f8", tup(num(3), text("<"), NONE, tup(text("a")), NONE,
                                                                      num(-1), num(-1), num(0))), b"A" * 8)),
        "flags.pkl": program(np_scalar(np_dtype("i8", tup(num(3), text("<"), NONE, NONE, NONE, num(-1), num(-1),
                                                          num(63))), b"A" * 8)),
    })
    for name, message in messages.items():
        assert "numpy dtype" in message, (name, message)
    assert "numpy dtype 'V8': only plain numeric dtypes load" in messages["param.pkl"]
    assert "numpy dtype <f8 with a state other than a byte order" in messages["structured_state.pkl"]


def test_numpy_values_need_their_exact_bytes(tmp_path):
    f4 = np_dtype("f4")
    messages = refused(tmp_path, {
        "short_scalar.pkl": program(np_scalar(f4, b"\0\0")),
        "long_array.pkl": program(np_array((10**5, 10**6), f4, b"\0" * 16)),
        "negative_shape.pkl": program(np_array((-4,), f4, b"")),
        "ndarray_called.pkl": program(call(glob("numpy", "ndarray"), tup(num(10**9)), text("f4"))),
        "bad_bool.pkl": program(np_scalar(np_dtype("b1", tup(num(3), text("|"), NONE, NONE, NONE, num(-1), num(-1),
                                                             num(0))), b"\x07")),
    })
    assert ("a numpy array of shape [100000, 1000000] (<f4) with 16 bytes of data, not 400000000000"
            in messages["long_array.pkl"])
    assert "scalar whose data is not 4 bytes" in messages["short_scalar.pkl"]
    assert "not up to 16 non-negative ints" in messages["negative_shape.pkl"]


def test_big_endian_arrays_load_to_the_same_numbers(fixtures_dir, tmp_path, monkeypatch):
    # Plain numeric dtypes in either byte order are legitimate: the TF fixture, re-pickled big-endian.
    fake_tf_network_module(monkeypatch)
    nets = pickle.loads((fixtures_dir / TF).read_bytes())  # our own fixture: a plain load is safe
    for net in nets:
        net.state["variables"] = [(k, v.astype(v.dtype.newbyteorder(">"))) for k, v in net.state["variables"]]
    data = pickle.dumps(nets, protocol=3)
    assert b"X\x01\x00\x00\x00>" in data
    (tmp_path / "be.pkl").write_bytes(data)
    ours, theirs = load_generator(tmp_path / "be.pkl").state_dict(), load_generator(fixtures_dir / TF).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    one = pickle.loads(program(np_scalar(np_dtype("f8", tup(num(3), text(">"), NONE, NONE, NONE, num(-1), num(-1),
                                                             num(0))), struct.pack(">d", 1.5))))
    assert one == 1.5  # the assembler's bytes are what numpy itself reads


# --- High: memory ------------------------------------------------------------------------------------

def tf_with_memo_index_changed(data: bytes) -> bytes:
    """The TF fixture with one byte changed: the first LONG_BINPUT's index made about 2**31."""
    pos = next(pos for op, _, pos in pickletools.genops(data) if op.name == "LONG_BINPUT")
    return data[:pos + 4] + b"\x7f" + data[pos + 5:]


def storage_blob(numel: int, data: bytes) -> bytes:
    """A legacy torch.save blob of one FloatStorage declaring `numel` elements."""
    header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    pid = tup(text("storage"), glob("torch", "FloatStorage"), text("0"), text("cpu"), num(numel), NONE)
    return header + program(pid + b"Q") + pickle.dumps(["0"], protocol=2) + struct.pack("<q", numel) + data


def torch_zip(data_pkl: bytes, records: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for name, value in records.items():
            z.writestr(f"archive/{name}", value)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def test_tiny_files_cannot_take_gigabytes(fixtures_dir, tmp_path):
    tensor = lambda storage, numel: call(glob("torch._utils", "_rebuild_tensor_v2"), storage, num(0),  # noqa: E731
                                         tup(num(numel)), tup(num(1)), FALSE, call(glob("collections", "OrderedDict")))
    zip_pid = tup(text("storage"), glob("torch", "FloatStorage"), text("0"), text("cpu"), num(10**11))
    deep = b"N" + b"\x85" * 200_000  # a tuple 200000 deep: hashing it would overflow the C stack
    nested = b"".join(b"]" for _ in range(5000)) + b"a" * 4999  # a list nested 5000 deep
    big = [(text(k), num(v)) for k, v in (("z_dim", 8000), ("c_dim", 0), ("w_dim", 8000), ("img_resolution", 1024),
                                          ("img_channels", 3))]
    files = {
        "memo.pkl": b"\x80\x02Nr\x00\xc2\xeb\x0b.",
        "tf_memo.pkl": tf_with_memo_index_changed((fixtures_dir / TF).read_bytes()),
        "wide.safetensors": safetensors_file({"init_kwargs": {"z_dim": 8000, "c_dim": 0, "w_dim": 8000,
                                                              "img_resolution": 1024, "img_channels": 3}}),
        "in_bounds.safetensors": safetensors_file({"init_kwargs": {"z_dim": 4096, "c_dim": 0, "w_dim": 4096,
                                                                   "img_resolution": 4096, "img_channels": 3}}),
        "nvlabs_wide.pkl": nvlabs_generator(dct((text("w_dim"), num(10**5)), (text("z_dim"), num(512)),
                                                *big[1:2], *big[3:])),
        "nvlabs_in_bounds.pkl": nvlabs_generator(dct((text("w_dim"), num(4096)), (text("z_dim"), num(4096)),
                                                     *big[1:2], *big[3:])),
        "declared.pkl": tf_networks(lst(tup(text("x"), np_array((10**11,), np_dtype("f4"), b"")))),
        "blob.pkl": program(dct((text("G_ema"), tensor(call(glob("torch.storage", "_load_from_bytes"),
                                                            raw(storage_blob(10**11, b"\0" * 16))), 4)))),
        "stride0.pkl": program(dct((text("G_ema"), tensor(call(glob("torch.storage", "_load_from_bytes"),
                                                               raw(storage_blob(4, b"\0" * 16))), 10**11)))),
        "zip.pt": torch_zip(program(dct((text("g_ema"), tensor(zip_pid + b"Q", 4)))), {"data/0": b"\0" * 16}),
        "zip_deep.pt": torch_zip(program(dct((deep, NONE))), {}),
        "deep.pkl": program(dct((deep, NONE))),
        "nested.pkl": nvlabs_generator(dct((text("mapping_kwargs"), nested))),
        "cycle.pkl": nvlabs_generator(b"}q\x00(X\x01\x00\x00\x00ah\x00u"),
        "frame.pkl": b"\x80\x04\x95" + (2**62).to_bytes(8, "little") + b"N.",
        "bytes8.pkl": b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b".",
        "bytearray8.pkl": b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b".",
    }
    messages = refused(tmp_path, files, may_load=("tf_memo.pkl",))  # nothing fetches the index it names
    assert all(len(data) < 1 << 20 for name, data in files.items() if name != "tf_memo.pkl")  # the fixture: 1.3 MB
    assert "not a StyleGAN2 checkpoint: a pickled NoneType" in messages["memo.pkl"]
    assert "unsupported generator configuration: z_dim = 8000" in messages["wide.safetensors"]
    assert "tensor 'synthesis.b4.const' is missing" in messages["in_bounds.safetensors"]
    assert "unsupported generator configuration: w_dim = 100000" in messages["nvlabs_wide.pkl"]
    assert "tensor 'synthesis.b4.const' is missing" in messages["nvlabs_in_bounds.pkl"]
    assert "truncated" in messages["blob.pkl"] and "truncated" in messages["zip.pt"]
    assert "does not fit its storage of 4 elements" in messages["stride0.pkl"]
    assert "tuples nested deeper than 100 levels" in messages["deep.pkl"]
    assert "tuples nested deeper than 100 levels" in messages["zip_deep.pt"]
    assert "nest deeper than 16 levels" in messages["nested.pkl"] and "(a cycle?)" in messages["cycle.pkl"]
    assert "out-of-band buffers" in messages["bytearray8.pkl"]


def test_seed_ranges_are_bounded():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10] and len(parse_seeds(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS
    with pytest.raises(ToonifyError, match=r"too many seeds in '0-100000000': 100000001 or more, at most 1024") as e:
        parse_seeds("0-100000000")
    assert e.value.exit_code == 2
    with pytest.raises(ToonifyError, match="seed 4294967296 is too large"):
        parse_seeds("4294967296")
    with pytest.raises(ToonifyError, match="cannot read seeds"):
        parse_seeds("1" * 30)


# --- Medium: damaged and malformed files -------------------------------------------------------------

def test_truncated_and_byte_flipped_torch_files(fixtures_dir, tmp_path):
    data = (fixtures_dir / ROSINALITY).read_bytes()
    files = {f"cut{i}.pt": data[: len(data) * i // 150] for i in range(1, 16)}  # 1% .. 10%
    pkl = data.index(b"data.pklPK") if b"data.pklPK" in data else data.index(b"data.pkl") + 8
    rng = np.random.default_rng(13)
    for i in range(20):
        flipped = bytearray(data)
        for pos in rng.integers(30, 400, 3):
            flipped[pkl + int(pos)] ^= 0xFF
        files[f"flip{i}.pt"] = bytes(flipped)
    paths = []
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
        paths.append(tmp_path / name)
    for name, r in zip(files, load_in_child(paths)):
        assert r["status"] in ("loaded", "refused") and "Traceback" not in r["message"], (name, r["message"])
        if name.startswith("cut"):
            assert r["status"] == "refused" and "damaged torch file" in r["message"], (name, r["message"])


def test_malformed_states_are_refused_by_name(tmp_path):
    kwargs = lambda **kw: dct(*((text(k), num(v) if type(v) is int else v) for k, v in kw.items()))  # noqa: E731
    ok = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3)
    rosinality = io.BytesIO()
    torch.save({"g_ema": {"style.1.weight": torch.zeros(4), "input.input": torch.zeros(3)}}, rosinality)
    messages = refused(tmp_path, {
        "state_list.pkl": program(dct((text("G_ema"), persistent("Generator", lst())))),
        "modules_list.pkl": program(dct((text("G_ema"), persistent("Generator", dct((text("_modules"), lst())))))),
        "z_dim0.pkl": nvlabs_generator(kwargs(**ok | {"z_dim": 0})),
        "negative.pkl": nvlabs_generator(kwargs(**ok | {"w_dim": -8})),
        "bool.pkl": nvlabs_generator(kwargs(**ok | {"img_channels": TRUE})),
        "resolution.pkl": nvlabs_generator(kwargs(**ok | {"img_resolution": 48})),
        "channels0.pkl": nvlabs_generator(kwargs(**ok, synthesis_kwargs=dct((text("channel_base"), num(4))))),
        "tf_version.pkl": tf_networks(lst()).replace(b"J\x04\x00\x00\x00", text("4")),
        "tf_vars.pkl": tf_networks(lst(num(3))),
        "tf_no_state.pkl": program(b"(" + (glob("dnnlib.tflib.network", "Network") + b")\x81") * 3 + b"t"),
        "rosinality.pt": rosinality.getvalue(),
        "json.safetensors": safetensors_file('{"init_kwargs": {"z_dim": [[[['),
        "kwargs.safetensors": safetensors_file({"init_kwargs": [1]}),
        "zero.safetensors": safetensors_file({"init_kwargs": ok | {"z_dim": 0}}),
        "header.safetensors": (10**6).to_bytes(8, "little") + b"{" + b" " * 100,
    })
    assert "state" in messages["state_list.pkl"]
    assert "unsupported generator configuration: z_dim = 0" in messages["z_dim0.pkl"]
    assert "unsupported generator configuration: w_dim = -8" in messages["negative.pkl"]
    assert "img_channels = True" in messages["bool.pkl"]
    assert "img_resolution = 48" in messages["resolution.pkl"]
    assert "0 channels at resolution 8" in messages["channels0.pkl"]
    assert "TensorFlow pickle version 4 is too old" in messages["tf_version.pkl"]
    assert "are not (name, array) pairs" in messages["tf_vars.pkl"]
    assert "damaged toonify-fast metadata" in messages["json.safetensors"]
    assert "damaged toonify-fast metadata: no 'init_kwargs' dict" in messages["kwargs.safetensors"]


# --- Medium: weights that are not numbers --------------------------------------------------------------

@pytest.fixture(scope="module")
def base_file(fixtures_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_generator(load_generator(fixtures_dir / NVLABS), path)
    return path


def test_non_finite_weights_are_refused_by_name(fixtures_dir, base_file, tmp_path):
    G = load_generator(base_file)
    with torch.no_grad():
        G.synthesis.b8.conv0.weight[0, 0, 0, 0] = float("nan")
        G.mapping.w_avg[:3] = float("inf")
    save_generator(G, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'synthesis\.b8\.conv0\.weight' holds 1 non-finite values "
                                              r"\(NaN or infinity\)"):
        load_generator(tmp_path / "nan.safetensors")
    ckpt = torch.load(fixtures_dir / ROSINALITY, weights_only=True)
    ckpt["g_ema"]["convs.0.conv.weight"][0, 0, 0, 0, 0] = float("-inf")
    torch.save(ckpt, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"tensor 'convs\.0\.conv\.weight' \(-> synthesis\.b8\.conv0\.weight\) "
                                              r"holds 1 non-finite values"):
        load_generator(tmp_path / "inf.pt")
    # Neither `blend` nor `sample` writes anything from such a file.
    with pytest.raises(CheckpointError, match="non-finite"):
        blend_files(base_file, tmp_path / "nan.safetensors", BlendConfig(), tmp_path / "out.safetensors")
    with pytest.raises(CheckpointError, match="non-finite"):
        write_sample_grid(SampleConfig(networks=(base_file, tmp_path / "nan.safetensors"), output=tmp_path / "grid.png",
                                       seeds=(0, 1), psi=1.0, device="cpu"))
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "grid.png").exists()


def test_tensor_dtypes_are_checked(base_file, tmp_path):
    data = base_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    key = "mapping.fc0.weight"
    assert header[key]["dtype"] == "F32"
    header[key]["dtype"] = "I32"
    head = json.dumps(header).encode()
    (tmp_path / "i32.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + data[8 + n:])
    with pytest.raises(CheckpointError, match=r"tensor 'mapping\.fc0\.weight' is torch\.int32 \(torch\.strided, cpu\), "
                                              "not a dense floating-point tensor"):
        load_generator(tmp_path / "i32.safetensors")
    const = tup(text("synthesis/4x4/Const/const"), np_array((2,), np_dtype("i4"), b"\0" * 8))
    messages = refused(tmp_path, {"tf_int.pkl": tf_networks(lst(const))})
    assert ("tensor 'synthesis/4x4/Const/const' (-> synthesis.b4.const) is an array of int32, not floating point"
            in messages["tf_int.pkl"])


# --- What held: code-execution payloads never run ---------------------------------------------------------

def payloads(marker) -> dict:
    """{name: pickle bytes} each of which, loaded by an ordinary unpickler, would create `marker`."""
    shell, py = f"touch {marker}", f"open({str(marker)!r}, 'w')"
    reduce = lambda module, name, *args: program(call(glob(module, name), *args))  # noqa: E731
    return {
        "os_system": reduce(os.system.__module__, "system", text(shell)),
        "os_popen": reduce("os", "popen", text(shell)),
        "eval": reduce("builtins", "eval", text(py)),
        "exec": reduce("builtins", "exec", text(py)),
        "subprocess": reduce("subprocess", "check_call", lst(text("touch"), text(str(marker)))),
        "import": reduce("builtins", "__import__", text("os")),
        "getattr": program(call(call(glob("builtins", "getattr"), glob("collections", "OrderedDict"), text("fromkeys")),
                                lst(text("a")))),
        "importlib": reduce("importlib", "import_module", text("antigravity")),
        "nested_pickle": reduce("pickle", "loads", raw(pickle.dumps(eval, protocol=2))),
        "torch_load": reduce("torch", "load", text(str(marker))),
        "numpy_load": reduce("numpy", "load", text(str(marker))),
        "runstring": reduce("numpy.testing._private.utils", "runstring", text(py), dct()),
        "inst": b"(S'" + shell.encode() + b"'\nios\nsystem\n.",
        "obj": program(b"(" + glob("os", "system") + text(shell) + b"o"),
        "newobj_class": program(glob("subprocess", "Popen") + tup(lst(text("touch"), text(str(marker)))) + b"\x81"),
        "ext_code": b"\x80\x02\x82\x01.",
        "build_on_function": program(build(glob("torch._utils", "_rebuild_tensor_v2"),
                                           tup(NONE, dct((text("__defaults__"), tup(NONE)))))),
        "setstate_on_class": program(build(glob("dnnlib.tflib.network", "Network"),
                                           dct((text("__setstate__"), glob("builtins", "eval"))))),
        "storage_payload": program(call(glob("torch.storage", "_load_from_bytes"),
                                        raw(pickle.dumps(eval, protocol=2)))),
        "zip_payload": torch_zip(program(dct((text("g_ema"), call(glob("os", "system"), text(shell))))), {}),
    }


def test_code_execution_payloads_never_run(tmp_path):
    marker = tmp_path / "pwned"
    files = {f"{name}.pkl": data for name, data in payloads(marker).items()}
    assert len(files) >= 18
    messages = refused(tmp_path, files)
    assert not marker.exists()
    refusal = [m for m in messages.values() if "refused to load" in m]
    assert len(refusal) >= 14, messages
