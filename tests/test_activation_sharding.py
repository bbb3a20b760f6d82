"""Activation sharding constraints by logical names (``sharding.constrain``) and rules overrides from config."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

from jax_align import sharding
from jax_align.sharding import DEFAULT_RULES, constrain, rules_from_config


def test_rules_from_config():
    assert rules_from_config(None) == DEFAULT_RULES
    overrides = {"length": "tensor", "embed": None, "batch": ["data"], "experts": ["fsdp", "tensor"]}
    rules = dict(rules_from_config(overrides))
    assert rules["length"] == "tensor" and rules["embed"] is None and rules["batch"] == "data"
    assert rules["experts"] == ("fsdp", "tensor") and rules["heads"] == "tensor"
    assert dict(rules_from_config([["mlp", []]]))["mlp"] is None
    with pytest.raises(ValueError, match="length"):
        rules_from_config({"length": "pipeline"})
    with pytest.raises(ValueError, match="distinct"):
        rules_from_config({"batch": ["fsdp", "fsdp"]})
    with pytest.raises(ValueError, match="pair"):
        rules_from_config([["batch"]])


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((2, 3, 4))
    assert constrain(x, ("batch", "length", "embed")) is x
    with sharding.use_rules(rules_from_config({"length": "tensor"})):
        assert dict(sharding.active_rules())["length"] == "tensor"
    assert sharding.active_rules() == DEFAULT_RULES


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from jax_align import sharding
    from jax_align.models import LlavaConfig, LlavaModel
    from jax_align.presets import tiny_llava_hf_config

    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2)
    f = jax.jit(lambda x: sharding.constrain(x, ("batch", "length", "embed")))
    x = jnp.ones((4, 8, 16))
    with jax.set_mesh(mesh):
        same = lambda y, spec: y.sharding.is_equivalent_to(jax.NamedSharding(mesh, spec), y.ndim)
        assert same(f(x), P("fsdp", None, None)), f(x).sharding.spec
        with sharding.use_rules(sharding.rules_from_config({"length": "tensor"})):
            g = jax.jit(lambda x: sharding.constrain(x, ("batch", "length", "embed")))
            assert same(g(x), P("fsdp", "tensor", None)), g(x).sharding.spec

    hf = tiny_llava_hf_config(vocab_size=64, image_token_id=63, hidden=32, layers=2, heads=4, kv_heads=2,
                              intermediate=64, vision_hidden=32, vision_layers=1, image_size=16, patch_size=8)
    model = LlavaModel(LlavaConfig.from_hf_dict(hf), rngs=nnx.Rngs(0), scan_layers=True)
    graphdef, state = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 60, (4, 12)), jnp.int32)
    fwd = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids)[0])
    plain = fwd(state, ids)
    text = fwd.lower(state, ids).as_text()
    assert "sharding_constraint" not in text and "@Sharding" not in text  # no mesh: no constraints
    sharded_state = sharding.shard_state(state, mesh)
    with jax.set_mesh(mesh):  # trace inside the mesh context: the constraints are part of the trace
        fwd_mesh = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids)[0])
        hlo = fwd_mesh.lower(sharded_state, ids).as_text()
        out = fwd_mesh(sharded_state, ids)
    n = hlo.count("sharding_constraint") + hlo.count("@Sharding")  # Shardy or GSPMD lowering
    assert n >= 4, n
    assert float(jnp.abs(out - plain).max()) < 1e-5

    # the splash wrapper under the mesh: a shard_map over batch and heads (Pallas interpret mode on CPU)
    from jax_align.models import attention as attn
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 128, 4, 128)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 128, 2, 128)), jnp.float32) for _ in range(2))
    seg = np.ones((2, 128), np.int32)
    seg[1, 60:] = 2
    info = attn.MaskInfo.build(jnp.asarray(seg), jnp.asarray(seg), jnp.arange(128), jnp.asarray(seg), jnp.arange(128))
    ref = attn.attend(q, k, v, info, window=16, implementation="reference")
    with jax.set_mesh(mesh):
        out = jax.jit(lambda q, k, v, info: attn._splash(q, k, v, info, 16, 128 ** -0.5, interpret=True))(q, k, v, info)
    assert float(jnp.abs(out - ref).max()) < 1e-5
    print("OK")
""")


def test_constraints_inside_a_mesh():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
