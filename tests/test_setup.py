"""The set-up a new user meets: the install extras, what make picks, and the tests without ../shared."""
import shutil
import subprocess
import sys
import pytest

tomllib = pytest.importorskip("tomllib")      # Python 3.11+

from tests.conftest import ROOT


def test_the_base_install_has_no_onnxruntime_and_the_extras_one_each():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime") or d.startswith("torch")]
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.18"] and extras["gpu"] == ["onnxruntime-gpu>=1.18"]
    assert not [d for name, deps in extras.items() if name not in ("cpu", "gpu") for d in deps
                if d.startswith("onnxruntime")]


def make_dry_run(*args, path=None):
    env = {"PATH": path} if path is not None else None
    return subprocess.run(["make", "-n", "-B", *args, "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                          text=True, env=env).stdout


def test_make_picks_the_onnxruntime_extra_by_the_driver(tmp_path):
    if shutil.which("make") is None:
        return
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o755)
    system = "/usr/bin:/bin"
    with_driver = make_dry_run("install", path=f"{fake}:{system}")
    without = make_dry_run("install", path=system)
    assert 'install -e ".[distill,dev,gpu]"' in with_driver and '"torch"' in with_driver
    assert 'install -e ".[distill,dev,cpu]"' in without and '"torch==2.13.0"' in without
    assert 'install -e ".[distill,dev,cpu]"' in make_dry_run("install", "ORT=cpu", path=f"{fake}:{system}")
    assert "toonify-fast distill demo --image \"me.jpg\"" in make_dry_run("demo", "IMAGE=me.jpg", path=system)


def test_without_shared_the_tests_stop_with_one_message(tmp_path):
    clone = tmp_path / "clone"
    (clone / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", clone / "tests" / "conftest.py")
    (clone / "tests" / "test_one.py").write_text("def test_one():\n    pass\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=clone,
                         capture_output=True, text=True)
    assert out.returncode == 4, out.stdout + out.stderr
    message = (f"the tests need {tmp_path / 'shared'} beside the clone (the shared fixtures and photos: "
               "fixtures/stylegan2/, photos/ missing). Put the project's shared folder there: clone/ and shared/ "
               "side by side.")
    assert message in out.stdout + out.stderr and "error" not in (out.stdout + out.stderr).lower().replace(
        "exit: ", "")
