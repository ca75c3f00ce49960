"""Seeded mutation fuzzing of every checkpoint format: each mutant loads or is refused with a
CheckpointError, in a child process under a memory limit: no crash, no traceback, bounded memory.

Mutations favour the structure (pickle opcodes and their arguments, the safetensors header,
the zip directory) over tensor data, where a flipped byte only changes a weight.
"""
import pickletools
import zipfile

import numpy as np
import pytest

from distill.checkpoint import load_generator, save_generator
from tests.helpers import load_in_child

PER_FORMAT = 52
PEAK_MB = 300


def structure_offsets(name: str, data: bytes) -> list[int]:
    """Byte offsets where the file's structure lives (not its tensor payload)."""
    if name.endswith(".pkl"):
        return [pos for op, _, pos in pickletools.genops(data) if op.name not in ("BINBYTES", "SHORT_BINBYTES")]
    if name.endswith(".safetensors"):
        return list(range(8 + int.from_bytes(data[:8], "little")))
    directory = data.rfind(b"PK\x01\x02")
    pkl = data.find(b"data.pkl") + 8
    return list(range(pkl, pkl + 600)) + list(range(directory, len(data)))


def mutate(data: bytes, offsets: list[int], rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    kind = rng.integers(6)
    at = int(rng.choice(offsets)) if rng.random() < 0.8 else int(rng.integers(len(data)))
    if kind == 0:  # flip bits
        out[at] ^= int(rng.integers(1, 256))
    elif kind == 1:  # an extreme byte
        out[at] = int(rng.choice([0, 0x7F, 0x80, 0xFF]))
    elif kind == 2:  # an extreme 4-byte number, where lengths and indices live
        out[at:at + 4] = int(rng.choice([0, 2**31 - 1, 2**32 - 1, 2**24])).to_bytes(4, "little")
    elif kind == 3:  # truncate
        del out[at:]
    elif kind == 4:  # delete a span
        del out[at:at + int(rng.integers(1, 64))]
    else:  # duplicate a span
        out[at:at] = out[at:at + int(rng.integers(1, 64))]
    return bytes(out)


@pytest.mark.timeout(300)
def test_mutated_checkpoints_load_or_are_refused(fixtures_dir, tmp_path):
    sources = {name: (fixtures_dir / name).read_bytes()
               for name in ("nvlabs_sg2ada_32.pkl", "rosinality_32.pt", "tf_stylegan2_32.pkl")}
    save_generator(load_generator(fixtures_dir / "nvlabs_sg2ada_32.pkl"), tmp_path / "ours.safetensors")
    sources["ours.safetensors"] = (tmp_path / "ours.safetensors").read_bytes()
    assert zipfile.is_zipfile(fixtures_dir / "rosinality_32.pt")
    rng, paths = np.random.default_rng(13), []
    for name, data in sources.items():
        offsets = structure_offsets(name, data)
        for i in range(PER_FORMAT):
            path = tmp_path / f"{i:03d}-{name}"
            path.write_bytes(mutate(data, offsets, rng))
            paths.append(path)
    results = load_in_child(paths)
    assert len(results) == 4 * PER_FORMAT >= 200
    for r in results:
        assert r["status"] in ("loaded", "refused"), f"{r['path']}:\n{r['message']}"
        assert "Traceback" not in r["message"] and "MemoryError" not in r["message"], r["message"]
        assert r["peak_mb"] < PEAK_MB, f"{r['path']}: {r['peak_mb']:.0f} MB"
    counts = {s: sum(r["status"] == s for r in results) for s in ("loaded", "refused")}
    assert counts["refused"] > PER_FORMAT, counts  # the mutations reach the structure, not just weights
