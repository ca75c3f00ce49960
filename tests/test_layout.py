"""The house's structure, checked: the command line sits on top (no library imports it), and
training does not load the teacher's code."""
import ast
import subprocess
import sys

from tests.conftest import ROOT

CLI_MODULES = {"runtime.cli", "distill.cli"}
ENTRY_POINTS = {"cli.py", "__main__.py"}


def imported_modules(path) -> set[str]:
    """Every module a file imports: import statements and importlib.import_module("...") calls."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
    return found


def test_no_library_module_imports_a_command_line():
    offenders = {f"{path.relative_to(ROOT)} imports {sorted(imported_modules(path) & CLI_MODULES)}"
                 for package in ("runtime", "distill") for path in (ROOT / package).glob("*.py")
                 if path.name not in ENTRY_POINTS and imported_modules(path) & CLI_MODULES}
    assert not offenders
    # The entry points do import it: the checker sees imports at all.
    assert "runtime.cli" in imported_modules(ROOT / "distill" / "__main__.py")


def test_training_loads_no_teacher_or_checkpoint_code():
    code = ("import sys, distill.train; "
            "print(sorted(m for m in sys.modules if m in ('distill.checkpoint', 'distill.stylegan2', 'distill.pairs')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
