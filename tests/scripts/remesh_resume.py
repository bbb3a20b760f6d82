"""8 simulated devices: a run checkpointed on mesh (1, 8, 1) resumes on (2, 2, 2) and matches a 1-device run."""

import json
import os
import sys

import jax
import numpy as np

from jax_align.train.config import load_config
from jax_align.train.trainer import Trainer
from jax_align.world.train_inputs import resolve_world_inputs

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_dpo.yaml")


def run(run_dir, steps, mesh):
    cfg = load_config(CONFIG, [f"run.dir={run_dir}", f"train.steps={steps}", "train.progress=false",
                               "checkpoint.every=2", "data.batch_size=8", "optim.lr=1e-3", "optim.eps=1e-3",
                               f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}", f"mesh.tensor={mesh[2]}",
                       f"mesh.devices={mesh[0] * mesh[1] * mesh[2]}"])
    return Trainer(resolve_world_inputs(cfg)).run()


def main(root):
    assert jax.device_count() == 8
    run(os.path.join(root, "ref"), 4, (1, 1, 1))
    moved = os.path.join(root, "moved")
    run(moved, 2, (1, 8, 1))
    summary = run(moved, 4, (2, 2, 2))  # resumes from step 2 on another mesh
    losses = {}
    for name in ("ref", "moved"):
        with open(os.path.join(root, name, "metrics.jsonl")) as f:
            losses[name] = [json.loads(line)["loss"] for line in f]
    print(json.dumps({"start_step": summary["start_step"],
                      "max_loss_diff": float(np.max(np.abs(np.subtract(losses["ref"], losses["moved"])))),
                      "steps": len(losses["moved"])}))


if __name__ == "__main__":
    main(sys.argv[1])
