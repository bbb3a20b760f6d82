"""Lower layers never import higher ones (issue 11 item 2), checked on every import statement of the package.

The layers, lowest first (a module may import its own layer and any lower one):

0. base utilities: ``sharding`` (the rules table), ``preference`` (the direction convention), ``atomic``, ``disk``,
   ``run_lock``, ``compile_cache``, ``orbax_logs``, ``host_memory``, ``platforms``
1. ``models`` (Flax model code, installed as ``jax_align.models``)
2. ``data``, ``model_store``, ``embedders``, ``presets``
3. ``logprobs``, ``losses``, ``reward_losses``, ``sampling``, ``generate``
4. ``train`` (stages, steps, trainer, scorer)
5. ``recipes``
6. ``world``, ``eval``
7. ``cli``, ``demo`` (a package: the main job, its methods and report)

Also: nothing in ``train`` tests a stage by name outside the stage registry.
"""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = [
    {"sharding", "preference", "atomic", "run_lock", "compile_cache", "orbax_logs", "disk", "host_memory",
     "platforms"},
    {"models"},
    {"data", "model_store", "embedders", "presets"},
    {"logprobs", "losses", "reward_losses", "sampling", "generate"},
    {"train"},
    {"recipes"},
    {"world", "eval"},
    {"cli", "demo"},
]


def _layer(top: str) -> int:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"jax_align.{top} is in no layer: add it to LAYERS (and to the docstring)")


def _modules():
    for base, package in ((os.path.join(ROOT, "jax_align"), None), (os.path.join(ROOT, "models"), "models")):
        for dirpath, _, files in os.walk(base):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    rel = os.path.relpath(path, base).split(os.sep)
                    top = package or (rel[0][:-3] if len(rel) == 1 else rel[0])
                    if top == "__init__":
                        continue
                    yield path, top


def _imports(path: str):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value


def test_lower_layers_never_import_higher_ones():
    bad = []
    for path, top in _modules():
        mine = _layer(top)
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "jax_align" or len(parts) < 2:
                continue
            theirs = _layer(parts[1])
            if theirs > mine:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line}: layer {mine} ({top}) imports {module} "
                           f"(layer {theirs})")
    assert not bad, "\n".join(bad)


def test_no_stage_branches_outside_the_registry():
    pattern = re.compile(r"stage\s*==|stage\s+in\b|stage\s*!=")
    hits = []
    train = os.path.join(ROOT, "jax_align", "train")
    for f in sorted(os.listdir(train)):
        if f.endswith(".py") and f != "stages.py":
            for i, line in enumerate(open(os.path.join(train, f)), 1):
                if pattern.search(line):
                    hits.append(f"{f}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
