"""Hostile files and failures for training and blending, each made here: a pair that passes the
folder scan and fails to decode in a DataLoader worker, damaged run files, a full disk, unwritable
outputs, a killed run's logs and temporary folders."""
import errno
import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest
import torch

import distill.runs
from distill.blend import BlendConfig, blend_files
from distill.data import scan_pairs
from distill.runs import TEMP_NAME, private_temp_folder
from distill.train import TrainConfig, train
from runtime.common import ToonifyError, UsageError, WriteError, partial_prefix
from tests.helpers import BASE, cli, ddp_failures, make_pair_folder, make_toon


def tiny(pairs, out, **overrides) -> TrainConfig:
    settings = dict(pairs=pairs, output=out, res=32, steps=6, batch_size=2, vgg=False, l1_weight=1.0, ndf=8,
                    workers=0, log_every=1, sample_every=100, checkpoint_every=2)
    return TrainConfig(**{**settings, **overrides})


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def undecodable_png(path, size=32):
    """A PNG whose every chunk checksum is right (PIL's verify() passes it, as the folder scan
    does) but whose image data is not a zlib stream: it fails only when decoded."""
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"not zlib" * 40)
                     + chunk(b"IEND", b""))
    return path


def test_a_pair_failing_to_decode_in_a_worker_names_the_file_and_saves_the_state(tmp_path):
    pairs = make_pair_folder(tmp_path / "pairs")
    bad = undecodable_png(pairs / "real" / "000005.png")
    assert len(scan_pairs(pairs)[0]) == 8          # the scan lets it through
    with pytest.raises(ToonifyError) as e:
        train(tiny(pairs, tmp_path / "runs", workers=2, steps=40))
    run_dir = next((tmp_path / "runs").iterdir())
    saved = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"]
    assert e.value.path == str(bad) and e.value.reason.startswith("truncated or corrupt image")
    assert e.value.hint.endswith(f"; the state at step {saved} is saved in {run_dir}")
    assert "Traceback" not in str(e.value) and "worker" not in str(e.value) and 0 <= saved < 4


def test_under_ddp_a_pair_failing_to_decode_stops_every_rank_at_one_saved_step(tmp_path):
    """Whichever rank draws the bad pair, both stop with its error and rank 0 saves the step before it."""
    pairs = make_pair_folder(tmp_path / "pairs")
    bad = undecodable_png(pairs / "toon" / "000002.png")
    errors = ddp_failures(train, tiny(pairs, tmp_path / "runs", batch_size=1, steps=40), tmp_path)
    run_dir = tmp_path / "runs" / "00000-lite-32"
    saved = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["world_size"] == 2 and 0 <= saved["step"] < 4 and len(saved["rng"]) == 2
    assert [(e["type"], e["path"]) for e in errors] == [("TrainError", str(bad))] * 2
    assert errors[0]["reason"] == errors[1]["reason"] and errors[0]["reason"].startswith("truncated or corrupt image")
    assert errors[0]["hint"].endswith(f"; the state at step {saved['step']} is saved in {run_dir}")


def test_resume_after_a_kill_logs_every_step_once(tmp_path):
    pairs = make_pair_folder(tmp_path / "pairs")
    cfg = tiny(pairs, tmp_path / "runs")
    run_dir = train(cfg, stop_at=2).run_dir
    at_two = (run_dir / "checkpoints" / "latest.pt").read_bytes()
    train(cfg, resume=run_dir, stop_at=4)
    # What a SIGKILL between the checkpoints leaves: steps 3 and 4 logged (the last line cut short),
    # the checkpoint of step 2.
    (run_dir / "checkpoints" / "latest.pt").write_bytes(at_two)
    with open(run_dir / "stats.jsonl", "a") as f:
        f.write('{"step": 5, "lr"')
    train(cfg, resume=run_dir)
    steps = [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stopped")
    pairs = make_pair_folder(root / "pairs")
    return train(tiny(pairs, root / "runs"), stop_at=2).run_dir


DAMAGE = {  # what is done to a copy of the run: (file, new bytes or a cut, the reason reported)
    "config_cut": ("config.json", 0.5, "damaged: not valid JSON"),
    "config_list": ("config.json", b"[1, 2]", 'damaged: it holds no training settings (no "config" object)'),
    "config_settings": ("config.json", b'{"config": {"res": "big"}}', "damaged: its settings are not a train run's"),
    "latest_cut": ("checkpoints/latest.pt", 0.5, "damaged or truncated: cannot read it"),
    "latest_empty": ("checkpoints/latest.pt", b"", "damaged or truncated: cannot read it"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_resume_from_damaged_run_files_is_one_clear_error(stopped_run, tmp_path, capsys, case):
    name, damage, reason = DAMAGE[case]
    run_dir = tmp_path / stopped_run.name
    shutil.copytree(stopped_run, run_dir)
    path = run_dir / name
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * damage)] if isinstance(damage, float) else damage)
    code, _, err = cli(capsys, "distill", "train", "--resume", run_dir)
    assert code == 1 and err.startswith(f"error: {path}: {reason}") and "hint:" in err, err
    assert "Traceback" not in err and len(err.split(" hint: ")) == 2


def test_a_damaged_pairs_json_stops_before_any_work(tmp_path):
    pairs = make_pair_folder(tmp_path / "pairs")
    (pairs / "pairs.json").write_text('{"base_sha256": "bbb')
    with pytest.raises(ToonifyError) as e:
        train(tiny(pairs, tmp_path / "runs"))
    assert e.value.path == str(pairs / "pairs.json") and e.value.reason.startswith("damaged: not valid JSON")
    assert not (tmp_path / "runs").exists()
    from distill.pairs import PairsConfig, generate_pairs
    with pytest.raises(ToonifyError) as e:
        generate_pairs(PairsConfig(base=BASE, blended=BASE, output=pairs, count=1, device="cpu"))
    assert e.value.path == str(pairs / "pairs.json") and e.value.reason.startswith("damaged: not valid JSON")


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_in_train_and_blend_is_one_error_line_and_leaves_nothing(tmp_path, monkeypatch):
    pairs = make_pair_folder(tmp_path / "pairs")
    monkeypatch.setattr(distill.runs.torch, "save", no_space)
    with pytest.raises(WriteError) as e:
        train(tiny(pairs, tmp_path / "runs", steps=2))
    run_dir = next((tmp_path / "runs").iterdir())
    assert str(e.value) == (f"{run_dir / 'checkpoints' / 'latest.pt'}: cannot write it (No space left on device)\n"
                            "  hint: check that the folder exists and is writable, and the disk has space")
    assert list((run_dir / "checkpoints").iterdir()) == []
    monkeypatch.undo()
    import safetensors.torch
    toon = tmp_path / "toon.safetensors"
    make_toon(toon)
    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(WriteError) as e:
        blend_files(BASE, toon, BlendConfig(), tmp_path / "out" / "blend.safetensors")
    assert str(e.value).startswith(f"{tmp_path / 'out' / 'blend.safetensors'}: cannot write it (No space left on device)")
    assert list((tmp_path / "out").iterdir()) == []


def test_unwritable_outputs_are_refused_before_work(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "blend.safetensors"
    code, _, err = cli(capsys, "distill", "blend", "--base", BASE, "--toon", BASE, "-o", out)
    assert (code, err) == (2, f"error: {out}: cannot write it: {tmp_path / 'file'} is not a folder hint: check that "
                              "the folder exists and is writable, and the disk has space")
    pairs = make_pair_folder(tmp_path / "pairs")
    with pytest.raises(UsageError, match=f"cannot write it: {tmp_path / 'file'} is not a folder"):
        train(tiny(pairs, tmp_path / "file" / "runs"))


def test_torch_multiprocessing_files_go_into_a_folder_that_is_removed():
    base = tempfile.gettempdir()      # short: the sockets inside must fit a Unix socket path
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(base) / f"{partial_prefix(TEMP_NAME).replace(str(os.getpid()), str(dead.pid), 1)}x1y2z3"
    (stale / "pymp-abc").mkdir(parents=True)
    with private_temp_folder() as folder:
        assert tempfile.gettempdir() == os.environ["TMPDIR"] == str(folder) and str(folder.parent) == base
        assert not stale.exists()
        # file_descriptor sharing: the workers make pymp-* folders with a socket each, here.
        loader = torch.utils.data.DataLoader([torch.zeros(2)] * 4, num_workers=2)
        assert len(list(loader)) == 4
        del loader
    assert not folder.exists() and tempfile.gettempdir() == base
