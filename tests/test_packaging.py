"""The built wheel holds every module and package-data file, and its ``jax-align train`` runs outside the tree.

The wheel is built from a copy of the sources (so a stale ``build/`` cannot leak files into it) and installed with
``--no-deps`` into a fresh venv. Its dependencies come from this venv without reinstalling them: a directory of
symlinks to the files of exactly the distributions the wheel's ``Requires-Dist`` pulls in (transitively), named
by a ``.pth`` line, so an undeclared dependency fails the test, and so does any module missing from the wheel
(the editable install's finder, which maps ``jax_align`` back to the source tree, is not in that view). It runs
from a temporary directory with no ``PYTHONPATH``.
"""

from __future__ import annotations

import email
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# source directory -> where its files land in the wheel
TREES = {"jax_align": "jax_align", "models": "jax_align/models"}
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo")


def _copy_sources(dst: Path, drop: tuple[str, ...] = ()) -> Path:
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    for tree in TREES:
        shutil.copytree(ROOT / tree, dst / tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    for rel in drop:
        (dst / rel).unlink()
    return dst


def _build_wheel(src: Path, out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    wheels = list(out.glob("jax_align-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _expected_files(src: Path) -> set[str]:
    files = set()
    for tree, target in TREES.items():
        for path in (src / tree).rglob("*"):
            if path.is_dir() or SKIP_DIRS & set(path.parts) or path.name.endswith(SKIP_SUFFIXES):
                continue
            files.add(f"{target}/{path.relative_to(src / tree).as_posix()}")
    return files


def _missing_from_wheel(src: Path, wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    return sorted(_expected_files(src) - names)


def _package_dirs_without_init(src: Path) -> list[str]:
    """Directories of Python modules that are not regular packages (the wheel would drop them)."""
    bad = []
    for tree in ("jax_align", "models"):
        for d in [src / tree, *(p for p in (src / tree).rglob("*") if p.is_dir())]:
            if d.name in SKIP_DIRS:
                continue
            if any(d.glob("*.py")) and not (d / "__init__.py").exists():
                bad.append(d.relative_to(src).as_posix())
    return sorted(bad)


def _dependency_closure(wheel: Path) -> tuple[list[md.Distribution], list[str]]:
    """The installed distributions that the wheel's requirements (no extras) pull in; and those not installed."""
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))
    todo = [(Requirement(r), "") for r in meta.get_all("Requires-Dist") or []]
    found: dict[str, md.Distribution] = {}
    missing = []
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(str(req))
            continue
        first = name not in found
        found[name] = dist
        for e in ("", *req.extras) if first else req.extras:
            todo.extend((Requirement(r), e) for r in dist.requires or [])
    return list(found.values()), missing


def _link_distributions(dists: list[md.Distribution], dst: Path) -> None:
    """A site directory holding symlinks to every file of ``dists`` (namespace packages merge naturally)."""
    for dist in dists:
        for f in dist.files or []:
            if f.parts[0] == "..":
                continue  # scripts and data outside site-packages
            src = Path(dist.locate_file(f))
            if not src.exists():
                continue
            target = dst / f
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(src)


def test_every_module_directory_is_a_package():
    assert _package_dirs_without_init(ROOT) == []


def test_the_content_check_catches_a_missing_init(tmp_path):
    """Negative control: the wheel of a tree without jax_align/train/__init__.py fails the content check."""
    src = _copy_sources(tmp_path / "src", drop=("jax_align/train/__init__.py",))
    wheel = _build_wheel(src, tmp_path / "dist")
    missing = _missing_from_wheel(src, wheel)
    assert "jax_align/train/trainer.py" in missing and "jax_align/train/config.py" in missing
    assert _package_dirs_without_init(src) == ["jax_align/train"]


@pytest.mark.timeout(300)
def test_wheel_installs_and_trains_outside_the_source_tree(tmp_path):
    src = _copy_sources(tmp_path / "src")
    wheel = _build_wheel(src, tmp_path / "dist")
    assert _missing_from_wheel(src, wheel) == []

    # A fresh venv (no pip, no site packages) that sees the wheel's declared dependencies, and nothing else of
    # this venv, through a plain .pth path line to a directory of symlinks.
    dists, missing = _dependency_closure(wheel)
    assert not missing, f"declared dependencies not installed in this venv: {missing}"
    assert "jax-align" not in {canonicalize_name(d.metadata["Name"]) for d in dists}
    deps = tmp_path / "deps"
    _link_distributions(dists, deps)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_jax_align_test_deps.pth").write_text(f"{deps}\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    work = tmp_path / "work"  # the cwd: outside the source tree, with a copy of the config
    work.mkdir()
    shutil.copy2(ROOT / "configs" / "tiny_dpo.yaml", work / "tiny_dpo.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JAX_ALIGN_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_ALIGN_CACHE_DIR=str(tmp_path / "xla_cache"), HF_HUB_OFFLINE="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")

    where = subprocess.run(
        [str(py), "-c", "import json, sys, jax_align, jax_align.train.trainer, jax_align.models;"
         "print(json.dumps([jax_align.__file__, jax_align.train.trainer.__file__, jax_align.models.__file__,"
         " sys.path]))"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    *files, sys_path = json.loads(where.stdout)
    for f in files:
        assert Path(f).resolve().is_relative_to(site.resolve()), f  # imported from the installed wheel
    assert ROOT not in {Path(p).resolve() for p in sys_path if p}, sys_path  # the source tree is not importable

    run_dir = tmp_path / "run"
    proc = subprocess.run([str(venv / "bin" / "jax-align"), "train", "tiny_dpo.yaml", "train.steps=2",
                           f"run.dir={run_dir}"], cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    assert (run_dir / "model").is_dir()
    assert os.listdir(tmp_path / "xla_cache"), "jax-align train did not write the compilation cache"
