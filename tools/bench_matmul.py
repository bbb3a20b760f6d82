#!/usr/bin/env python
"""fp32 matmul throughput on the CPU: JAX (XLA) under several XLA flag settings vs torch (issue 13).

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_matmul.py [--n 4096] [--shapes 2048x512x1408]

Every XLA setting runs in its own subprocess (``XLA_FLAGS`` is read once, when JAX starts its CPU backend), so
one setting cannot leak into the next. For each it prints GFLOP/s (2 m n k per product, median of ``--repeats``
timed calls after a warm-up), and the process's CPU-seconds per wall-second during the timed calls (about 1: one
core busy; about the core count: all of them; only on a quiet machine) and the threads that did at least 10%
of the work (``thr``: how many threads the product ran on, also on a busy machine). A flag this jaxlib does not
know makes XLA abort: reported as ``unknown flag``. Also printed: the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = [  # (name, XLA_FLAGS)
    ("default", ""),
    ("one thread (no Eigen pool)", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"),
    ("fast math", "--xla_cpu_enable_fast_math=true"),
    ("oneDNN (xla_cpu_use_onednn)", "--xla_cpu_use_onednn=true"),
    ("classic runtime (no thunks)", "--xla_cpu_use_thunk_runtime=false"),
    ("YNNPACK dots off", "--xla_cpu_experimental_ynn_fusion_type=-dot"),
    ("XNNPACK dots", "--xla_cpu_experimental_xnn_fusion_type=dot"),
    ("2 host devices", "--xla_force_host_platform_device_count=2"),
    ("8 host devices", "--xla_force_host_platform_device_count=8"),
]


def _shapes(a) -> list[tuple[int, int, int]]:
    out = [(a.n, a.n, a.n)]
    for s in a.shapes:
        m, k, n = (int(x) for x in s.lower().split("x"))
        out.append((m, k, n))
    return out


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, from /proc (empty where there is none)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return {}
    return out


def busy_threads(before: dict[int, float], after: dict[int, float]) -> int:
    """Threads that did at least 10% of the process's CPU work between two :func:`thread_cpu` readings: how
    many cores the work really used, whatever else the machine runs (CPU/wall is not, on a busy machine)."""
    used = {t: after[t] - before.get(t, 0.0) for t in after}
    total = sum(used.values())
    return sum(1 for v in used.values() if total > 0 and v >= 0.1 * total)


def _time(fn, sync, repeats: int) -> tuple[float, float, int]:
    """Median wall seconds, the CPU-seconds of that call (``time.process_time``: all threads) and the busy
    threads over all timed calls."""
    sync(fn())
    t0 = time.perf_counter()
    sync(fn())
    inner = max(1, int(0.1 / max(time.perf_counter() - t0, 1e-6)))  # >= 0.1 s per timing: /proc counts ticks
    runs = []
    before = thread_cpu()
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            sync(fn())
        runs.append(((time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner))
    threads = busy_threads(before, thread_cpu())
    runs.sort()
    return (*runs[len(runs) // 2], threads)


def worker(engine: str, shapes, repeats: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    res = {}
    for m, k, n in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        y = rng.standard_normal((k, n), dtype=np.float32)
        if engine == "jax":
            import jax

            a, b = jax.device_put(x), jax.device_put(y)
            f = jax.jit(lambda a, b: a @ b)
            wall, cpu, threads = _time(lambda f=f, a=a, b=b: f(a, b), lambda r: r.block_until_ready(), repeats)
        else:
            import torch

            a, b = torch.from_numpy(x), torch.from_numpy(y)
            with torch.no_grad():
                wall, cpu, threads = _time(lambda a=a, b=b: a @ b, lambda r: r, repeats)
        res[f"{m}x{k}x{n}"] = {"gflops": 2.0 * m * k * n / wall / 1e9, "wall": wall, "cpu_per_wall": cpu / wall,
                                  "threads": threads}
    return res


def run_setting(engine: str, flags: str, a) -> dict | str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    cmd = [sys.executable, __file__, "--worker", engine, "--repeats", str(a.repeats), "--n", str(a.n),
           "--shapes", *a.shapes]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        err = p.stderr.strip().splitlines()
        text = " ".join(err[-3:]) if err else f"exit {p.returncode}"
        return "unknown flag" if "Unknown flag" in text or "unknown flag" in text.lower() else text[-200:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """In-process fp32 n x n matmul GFLOP/s for JAX and torch (the bench's 'matmul peak')."""
    out = {}
    for engine in ("jax", "torch"):
        out[engine] = worker(engine, [(n, n, n)], repeats)[f"{n}x{n}x{n}"]["gflops"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096, help="square size (default 4096)")
    p.add_argument("--shapes", nargs="*", default=["2048x512x1408", "512x512x512"],
                   help="extra MxKxN products (default: a bench-model MLP matmul and a small one)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="*", help="run only the settings whose name contains one of these words")
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, _shapes(a), a.repeats)))
        return 0
    import jax
    import torch

    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}; user XLA_FLAGS "
          f"{os.environ.get('XLA_FLAGS', '')!r}")
    rows = [("torch", "", "torch")] + [(name, flags, "jax") for name, flags in SETTINGS]
    if a.only:
        rows = [r for r in rows if any(w in r[0] for w in a.only)]
    print(f"{'setting':<30}" + "".join(f"{s:>26}" for s in [f"{m}x{k}x{n}" for m, k, n in _shapes(a)]))
    print(f"{'':<30}" + "".join(f"{'GFLOP/s cpu/wall thr':>26}" for _ in _shapes(a)))
    for name, flags, engine in rows:
        res = run_setting(engine, flags, a)
        if isinstance(res, str):
            print(f"{name:<30}  {res}")
            continue
        print(f"{name:<30}" + "".join(f"{r['gflops']:>13.1f}  {r['cpu_per_wall']:>6.2f} {r['threads']:>3}"
                                      for r in res.values()),
              flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
