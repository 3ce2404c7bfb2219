"""The wheel carries every package directory of core/, plugins/ and templates/, and its data files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

ROOTS = {"core": "tuneforge", "plugins": "tuneforge/plugins", "templates": "tuneforge/templates"}


def package_dirs() -> set[str]:
    """Every folder holding Python files, as its path inside the wheel."""
    out = set()
    for root, prefix in ROOTS.items():
        for py in (REPO / root).rglob("*.py"):
            if "__pycache__" not in py.parts:
                rel = py.parent.relative_to(REPO / root).as_posix()
                out.add(prefix if rel == "." else f"{prefix}/{rel}")
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (path,) = list(out.glob("tuneforge-*.whl"))
    return zipfile.ZipFile(path)


def test_every_package_directory_is_in_the_wheel(wheel):
    names = wheel.namelist()
    missing = [d for d in sorted(package_dirs()) if f"{d}/__init__.py" not in names]
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    for py in (REPO / "plugins").rglob("*.py"):
        assert f"tuneforge/plugins/{py.relative_to(REPO / 'plugins').as_posix()}" in names


def test_template_files_and_console_script_are_in_the_wheel(wheel):
    names = wheel.namelist()
    for yaml_file in (REPO / "templates").glob("*.yaml"):
        assert f"tuneforge/templates/{yaml_file.name}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "tuneforge = tuneforge.cli.main:main" in wheel.read(entry_points).decode()


def test_every_module_imports_without_warnings():
    """Each module of the package imports cleanly on its own (warnings are errors)."""
    modules = []
    for root, prefix in ROOTS.items():
        for py in (REPO / root).rglob("*.py"):
            rel = py.relative_to(REPO / root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules.append(".".join([prefix.replace("/", "."), *parts]))
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code, *sorted(modules)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_top_level_layout():
    for name in ("pyproject.toml", "README.md", "core", "plugins", "templates", "data", "tests", "docs"):
        assert (REPO / name).exists(), name
    assert Path(REPO / ".ci" / "run").is_file()
