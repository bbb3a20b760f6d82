"""Package discovery for setuptools: ``jax_align/*`` plus ``models/`` installed as ``jax_align.models``.

Everything else (metadata, dependencies, scripts) lives in pyproject.toml.
"""

from setuptools import find_packages, setup

model_packages = ["jax_align.models"] + [f"jax_align.models.{p}" for p in find_packages("models")]
package_dir = {"jax_align.models": "models"}
package_dir.update({f"jax_align.models.{p}": f"models/{p.replace('.', '/')}" for p in find_packages("models")})

setup(
    packages=find_packages(include=["jax_align", "jax_align.*"]) + model_packages,
    package_dir=package_dir,
)
