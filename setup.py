"""Package discovery for setuptools: ``jax_align/*`` plus ``models/`` installed as ``jax_align.models``.

Every directory of ``jax_align/`` and ``models/`` that holds Python modules must have an ``__init__.py``
(``find_packages`` skips namespace directories, and the wheel would silently lack them). Data files that code
reads at run time belong inside a package directory (matched by ``DATA``), not in ``configs/``, which is not
installed. tests/test_packaging.py builds the wheel and checks that it holds every file of both trees.

Everything else (metadata, dependencies, scripts) lives in pyproject.toml.
"""

from setuptools import find_packages, setup

# Package data: files of these kinds inside any package directory go into the wheel.
DATA = ["*.json", "*.yaml", "*.yml", "*.txt", "*.md", "*.jinja", "*.csv", "*.model", "*.npz", "*.npy", "*.png"]

model_packages = ["jax_align.models"] + [f"jax_align.models.{p}" for p in find_packages("models")]
package_dir = {"jax_align.models": "models"}
package_dir.update({f"jax_align.models.{p}": f"models/{p.replace('.', '/')}" for p in find_packages("models")})

setup(
    packages=find_packages(include=["jax_align", "jax_align.*"]) + model_packages,
    package_dir=package_dir,
    package_data={"": DATA},
)
