"""Run in a subprocess with 8 simulated CPU devices: an AnyRes model's (2,2,2)-sharded forward on a row-wise
batch (tiles padded to the front end's maximum, row gather plans) equals the 1-device forward."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, sys.argv[2])
from hf_fixtures import IMAGE_TOKEN  # noqa: E402
from jax_align.models import LlavaConfig, load_hf_params  # noqa: E402
from jax_align.models.frontends import frontend_for  # noqa: E402

from jax_align.sharding import batch_sharding, make_mesh, state_shardings  # noqa: E402

SIZES = [(21, 37), (50, 29), (40, 33), (16, 16)]


def main(path):
    from flax import nnx

    assert jax.device_count() == 8, jax.devices()
    cfg = LlavaConfig.from_hf_dir(path)
    fe = frontend_for(cfg)
    rng = np.random.default_rng(0)
    rows, ids = [], np.zeros((4, 160), np.int32)
    for b, (h, w) in enumerate(SIZES):
        t = fe.num_tiles(h, w)
        rows.append([(rng.normal(size=(t, 3, fe.tile, fe.tile)).astype(np.float32), (h, w))])
        ids[b] = rng.integers(3, IMAGE_TOKEN - 2, 160)
        ids[b, 3:3 + fe.num_tokens(h, w)] = IMAGE_TOKEN
    images = fe.rows(rows, max_images=1, max_tiles=fe.max_tiles, max_tokens=160)

    def run(graphdef, params, ids, images):
        logits, _ = nnx.merge(graphdef, params)(ids, images)
        return logits

    graphdef, params = load_hf_params(path, cfg)
    single = np.asarray(jax.jit(run, static_argnums=0)(graphdef, params, jnp.asarray(ids), images))
    mesh = make_mesh(2, 2, 2)
    graphdef, sharded = load_hf_params(path, cfg, shardings=state_shardings(params, mesh))
    with jax.set_mesh(mesh):
        put = lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim))  # noqa: E731
        out = jax.jit(run, static_argnums=0)(graphdef, sharded, put(ids), jax.tree.map(put, images))
        out = np.asarray(out)
    print(json.dumps({"max_abs_err": float(np.abs(out - single).max()), "max_abs_ref": float(np.abs(single).max())}))


if __name__ == "__main__":
    main(sys.argv[1])
