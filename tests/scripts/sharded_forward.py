"""Run in a subprocess with 8 simulated CPU devices: the (2,2,2)-sharded forward equals the 1-device forward."""

import json
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[2])
from hf_fixtures import random_inputs  # noqa: E402
from jax_align.models import LlavaConfig, load_hf_params, make_forward  # noqa: E402

from jax_align.sharding import batch_sharding, make_mesh, state_shardings  # noqa: E402


def main(path):
    assert jax.device_count() == 8, jax.devices()
    cfg = LlavaConfig.from_hf_dir(path)
    graphdef, params = load_hf_params(path, cfg)
    forward = make_forward(graphdef, cfg)
    ids, px, mask = random_inputs(cfg, batch=4, pad_right=(0, 5, 0, 9))
    single = np.asarray(forward(params, ids, px, mask))

    mesh = make_mesh(2, 2, 2)
    shardings = state_shardings(params, mesh)
    graphdef, sharded = load_hf_params(path, cfg, shardings=shardings)
    n_split = sum(1 for leaf in jax.tree.leaves(sharded) if len(leaf.sharding.device_set) == 8
                  and not leaf.sharding.is_fully_replicated)
    with jax.set_mesh(mesh):
        b2, b4 = batch_sharding(mesh, 2), batch_sharding(mesh, 4)
        out = forward(sharded, jax.device_put(ids, b2), jax.device_put(px, b4), jax.device_put(mask, b2))
        out = np.asarray(out)
    print(json.dumps({"max_abs_err": float(np.abs(out - single).max()), "max_abs_ref": float(np.abs(single).max()),
                      "sharded_params": n_split,
                      "total_params": len(jax.tree.leaves(sharded))}))


if __name__ == "__main__":
    main(sys.argv[1])
