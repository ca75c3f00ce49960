import subprocess
import sys

from tests.conftest import ROOT


def test_runtime_cli_import_loads_no_torch():
    code = ("import sys, runtime.cli, runtime.common, runtime.images; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'distill')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "distill" in out.stdout
