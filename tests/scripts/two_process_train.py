"""Two processes with jax.distributed on localhost (CPU, gloo) train like one process: launched by the test."""

import json
import os
import subprocess
import sys


def main(root, world):
    base = [sys.executable, "-m", "jax_align.cli.main", "train",
            os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny_dpo.yaml"),
            "train.steps=3", "train.progress=false", "checkpoint.every=100", "data.batch_size=8",
            "data.shuffle=false", "optim.lr=1e-3", f"data.train={os.path.join(world, 'pairs.jsonl')}",
            "data.world={}", f"model.tokenizer={os.path.join(world, 'tokenizer')}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(base + [f"run.dir={os.path.join(root, 'single')}"], check=True, env=env, timeout=600)
    # the init model directory is written once, before the processes start (no race on the files)
    two = os.path.join(root, "two")
    os.makedirs(two, exist_ok=True)
    subprocess.run(["cp", "-r", os.path.join(root, "single", "init_model"), os.path.join(two, "init_model")],
                   check=True)
    port = 20000 + os.getpid() % 20000
    procs = [subprocess.Popen(base + [f"run.dir={two}", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                      "--process-id", str(i)], env=env) for i in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], codes
    losses = {}
    for name in ("single", "two"):
        with open(os.path.join(root, name, "metrics.jsonl")) as f:
            losses[name] = [json.loads(line)["loss"] for line in f]
    print(json.dumps(losses))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
