"""Hostile checkpoints for the hardening tests: a small pickle assembler, and a worker that loads
files in a child process under a memory limit and reports, per file, what happened and the peak
resident memory the load added.

    results = load_in_child([path1, path2])   # [{"path", "status", "message", "peak_mb"}, ...]

status is "loaded", "refused" (a ToonifyError: the message a user sees) or "error" (anything
else: a traceback). A child that dies (a segfault) fails the caller with the file it was on.
"""
import json
import re
import subprocess
import sys

from tests.conftest import ROOT

MARK = "@@hostile "
CHILD_AS_LIMIT = 6 << 30  # address space the child may add: a blow-up fails there, not in pytest


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


# --- The child process ------------------------------------------------------------------------------

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
    proc = subprocess.run([sys.executable, "-m", "tests.distill.hostile", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line[len(MARK):]) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    results = [r for r in lines if "status" in r]
    if proc.returncode != 0 or len(results) != len(paths):
        started = [r["start"] for r in lines if "start" in r]
        raise AssertionError(f"the child died (exit {proc.returncode}) while loading "
                             f"{started[-1] if started else '?'}:\n{proc.stderr[-3000:]}")
    return results


if __name__ == "__main__":
    _child(sys.argv[1:])
