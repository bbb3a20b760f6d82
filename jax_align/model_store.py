"""Model directories of this project: an Orbax checkpoint of the parameters plus the HF-style config.

Layout of a jax-align model directory::

    DIR/jax_align_model.json   format marker (and the parameter dtype)
    DIR/config.json            the Hugging Face LLaVA config (so the directory also explains itself)
    DIR/params/                Orbax (OCDBT/tensorstore) checkpoint of the parameter tree
    DIR/tokenizer*.json ...    tokenizer / processor files copied from the source model
    DIR/adapter/               a LoRA run's unmerged adapter (jax_align.train.adapter), beside the merged params

:func:`load_model` reads such a directory or a plain Hugging Face directory, so every command that takes
``--model`` accepts both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jax_align.models import LlavaConfig, abstract_model, load_hf_params
from jax_align.models.convert import copy_assets
from jax_align.models.layer_stack import stack_layers, unstack_layers

MARKER = "jax_align_model.json"


def is_jax_align_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def check_replaceable(out_dir: str) -> None:
    """Refuse to overwrite a non-empty directory that is not a model (a mistyped output path must not wipe it)."""
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a directory; choose another output path")
    entries = [e for e in os.listdir(out_dir) if not e.startswith(".")]
    if entries and not (is_jax_align_model(out_dir) or os.path.isfile(os.path.join(out_dir, "config.json"))):
        raise FileExistsError(f"{out_dir}: exists and holds files that are not a model ({len(entries)} entries); "
                              "choose another output path or remove it")


def save_model(out_dir: str, config: LlavaConfig, params, source_dir: str | None = None,
               extra: Callable[[str], object] | None = None) -> str:
    """Write ``params`` (an NNX state) with Orbax, the config and the tokenizer/processor files.

    ``extra(tmp_dir)``, when given, writes more files into the model directory (a LoRA run's ``adapter/``) on the
    primary process, inside the same atomic commit.

    The directory is filled as a temporary sibling and renamed into place when complete
    (:func:`jax_align.atomic.atomic_dir`): an existing model at ``out_dir`` stays loadable until the new one
    replaces it, whatever fails or is killed in between.
    """
    import orbax.checkpoint as ocp

    from jax_align.atomic import atomic_dir
    from jax_align.orbax_logs import quiet_orbax_errors

    quiet_orbax_errors()  # a failed save is raised here once, not also logged with tracebacks by Orbax's threads
    out_dir = os.path.abspath(out_dir)
    check_replaceable(out_dir)
    primary = jax.process_index() == 0  # every process joins the Orbax save; one writes the small files
    tree = nnx.to_pure_dict(unstack_layers(params))  # files hold per-layer tensors (scan_layers or not)
    multi = jax.process_count() > 1
    tmp = None
    if multi:  # every process must write into the same temporary: a fixed name, emptied by process 0 first
        from jax.experimental import multihost_utils

        tmp = os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.tmp-save")
        if primary and os.path.exists(tmp):
            import shutil

            shutil.rmtree(tmp)
        multihost_utils.sync_global_devices("jax_align.save_model.tmp")
        # a model file holds full arrays: gather them (every process joins the save)
        tree = jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), tree)
    if primary:  # a full disk is found before writing, not halfway through (the old model stays either way)
        from jax_align.disk import ensure_room, tree_nbytes

        ensure_room(out_dir, tree_nbytes(tree), "the model")
    with atomic_dir(out_dir, tmp=tmp, commit=primary) as work:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(work, "params"), tree)
        dtype = str(jax.tree.leaves(params)[0].dtype)
        if primary:
            with open(os.path.join(work, "config.json"), "w") as f:
                json.dump(config.to_hf_dict(), f, indent=2, sort_keys=True)
            copy_assets(source_dir or config.source_dir, work)
            if extra is not None:
                extra(work)
            with open(os.path.join(work, MARKER), "w") as f:  # written last: its presence means the save completed
                json.dump({"format": "jax-align-model", "version": 1, "param_dtype": dtype}, f)
    if multi:
        multihost_utils.sync_global_devices("jax_align.save_model.done")
    return out_dir


def load_model(path: str, dtype=None, shardings=None, compute_dtype=None, remat: str = "none",
               attention: str = "auto", scan_layers=None):
    """Load a jax-align model directory or a Hugging Face directory: ``(config, graphdef, params)``.

    ``dtype`` defaults to the stored dtype (fp32 for HF directories); ``shardings`` optionally places the
    parameters on a mesh (a pytree from :func:`jax_align.sharding.state_shardings`). ``attention`` and
    ``scan_layers`` are model options (:class:`jax_align.models.LlavaModel`); files hold per-layer tensors
    whatever ``scan_layers`` is (stacked after reading, unstacked by :func:`save_model`).
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: model directory not found")
    config = LlavaConfig.from_hf_dir(path).replace(source_dir=path)
    if not is_jax_align_model(path):
        graphdef, params = load_hf_params(path, config, param_dtype=dtype or jnp.float32, shardings=shardings,
                                          dtype=compute_dtype, remat=remat, attention=attention,
                                          scan_layers=scan_layers)
        return config, graphdef, params
    import orbax.checkpoint as ocp

    with open(os.path.join(path, MARKER)) as f:
        meta = json.load(f)
    dtype = dtype or jnp.dtype(meta.get("param_dtype", "float32"))
    graphdef, model_abstract = abstract_model(config, param_dtype=dtype, dtype=compute_dtype, remat=remat,
                                              attention=attention, scan_layers=scan_layers)
    abstract = unstack_layers(model_abstract)
    target = nnx.to_pure_dict(abstract)
    if shardings is not None:
        flat_sh = nnx.to_pure_dict(unstack_layers(shardings, config.text.num_layers))
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, flat_sh)
    else:
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), target)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.join(path, "params"), target)
    nnx.replace_by_pure_dict(abstract, restored)
    return config, graphdef, stack_layers(abstract, like=model_abstract)
