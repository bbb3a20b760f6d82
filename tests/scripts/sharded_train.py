"""8 simulated devices: 4 DPO steps on mesh (data, fsdp, tensor) = (2, 2, 2) equal the 1-device run."""

import json
import os
import sys

import jax
import numpy as np

from jax_align.model_store import load_model
from jax_align.train.config import load_config
from jax_align.train.trainer import Trainer
from jax_align.world.train_inputs import resolve_world_inputs


def run(root, name, mesh):
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_dpo.yaml"),
                      [f"run.dir={os.path.join(root, name)}", "train.steps=4", "train.progress=false",
                       "checkpoint.every=100", "data.batch_size=8", "optim.lr=1e-3",
                       "optim.eps=1e-3",  # keep Adam from amplifying rounding in near-zero gradients
                       f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}", f"mesh.tensor={mesh[2]}",
                       f"mesh.devices={mesh[0] * mesh[1] * mesh[2]}"])
    Trainer(resolve_world_inputs(cfg)).run()
    with open(os.path.join(cfg.run.dir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    params = [np.asarray(x) for x in jax.tree.leaves(load_model(os.path.join(cfg.run.dir, "model"))[2])]
    return losses, params


def main(root):
    assert jax.device_count() == 8
    l1, p1 = run(root, "single", (1, 1, 1))
    l8, p8 = run(root, "sharded", (2, 2, 2))
    print(json.dumps({"steps": len(l1), "max_loss_diff": float(np.max(np.abs(np.subtract(l1, l8)))),
                      "max_param_diff": float(max(np.abs(a - b).max() for a, b in zip(p1, p8, strict=False)))}))


if __name__ == "__main__":
    main(sys.argv[1])
