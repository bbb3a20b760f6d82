"""Running the demo's method jobs on worker processes, in dependency order.

After the SFT model, the methods are independent runs, except for what they share on disk: the BDHS pairs of a
seed (DPO, Mixed-DPO and MM-DPO train on them), Align²'s curated set (its random control draws as many records),
and whatever a method's first seed leaves for its later seeds (AMP's M_1 expert). Each of those is one job that
the others wait for, so no two processes write the same file.

On the 2-core CPU one trainer process keeps about 1.55 cores busy (XLA's thread pool and the host's Python work);
two processes at once do two runs of the captioning stage in 74 s where one after the other took 99 s (200
steps each, equal losses). ``workers=1`` runs every job in this process, in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field


@dataclass
class Job:
    key: str  # unique: "bdhs pairs (seed 0)", "dpo (seed 0)"
    fn: Callable  # module-level (picklable): fn(ctx, *args) -> dict with "timings", "cpu", "data" and the result
    args: tuple
    weight: float  # expected seconds: of the ready jobs, the longest chain (critical_path) starts first
    needs: tuple[str, ...] = ()
    progress: bool = True  # a stage of the progress lines
    result: dict = field(default_factory=dict)


def critical_path(jobs: list[Job]) -> dict[str, float]:
    """Each job's weight plus the heaviest chain of jobs that wait for it: ready jobs start in this order, so the
    BDHS pairs (three methods wait for them) go before a heavier job that nothing waits for."""
    waiting: dict[str, list[str]] = {j.key: [] for j in jobs}
    for j in jobs:
        for n in j.needs:
            waiting.setdefault(n, []).append(j.key)
    weight = {j.key: j.weight for j in jobs}
    memo: dict[str, float] = {}

    def rank(key: str, seen: frozenset = frozenset()) -> float:
        if key not in memo:
            if key in seen:  # a cycle: run_jobs reports it when nothing is ready
                return 0.0
            memo[key] = weight.get(key, 0.0) + max((rank(k, seen | {key}) for k in waiting.get(key, [])),
                                                   default=0.0)
        return memo[key]

    return {j.key: rank(j.key) for j in jobs}


def _init_worker(platforms: str | None, cache_dir: str | None) -> None:
    """A spawned worker takes its parent's JAX platform choice and compilation cache (``jax.config`` is not
    inherited by a new process)."""
    import jax

    if platforms:
        jax.config.update("jax_platforms", platforms)
    if cache_dir:
        from jax_align.compile_cache import enable_compilation_cache

        enable_compilation_cache(cache_dir)


def run_jobs(ctx, jobs: list[Job], workers: int, progress, on_done: Callable[[Job], None]) -> None:
    """Run ``jobs`` with at most ``workers`` at a time, each when the jobs it ``needs`` are done; merge every job's
    ``timings`` / ``cpu`` / ``data`` into ``ctx`` and call ``on_done(job)`` in the parent as each one finishes.
    A failed job raises here (after the running ones finish)."""
    pending = {j.key: j for j in jobs}
    unknown = {n for j in jobs for n in j.needs} - set(pending)
    if unknown:
        raise ValueError(f"jobs need unknown jobs: {sorted(unknown)}")
    done: set[str] = set()
    rank = critical_path(jobs)

    def ready() -> list[Job]:
        out = [j for j in pending.values() if set(j.needs) <= done]
        return sorted(out, key=lambda j: -rank[j.key])

    def merge(job: Job, result: dict) -> None:
        for name in ("timings", "cpu", "data"):
            getattr(ctx, name).update(result.pop(name, {}))
        job.result = result
        done.add(job.key)
        on_done(job)

    if workers <= 1:
        while pending:
            candidates = ready()
            if not candidates:
                raise RuntimeError(f"jobs wait on each other: {sorted(pending)}")
            job = candidates[0]
            del pending[job.key]
            started = progress.start(job.key) if job.progress else time.perf_counter()
            merge(job, job.fn(ctx, *job.args))
            if job.progress:
                progress.finish(job.key, started)
        return

    import multiprocessing

    import jax

    from jax_align.compile_cache import cache_dir

    init = (jax.config.jax_platforms or None, cache_dir())
    running: dict[Future, tuple[Job, float]] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=init) as pool:
        while pending or running:
            for job in ready():
                if len(running) >= workers:
                    break
                del pending[job.key]
                started = progress.start(job.key) if job.progress else time.perf_counter()
                running[pool.submit(job.fn, ctx, *job.args)] = (job, started)
            if not running:
                raise RuntimeError(f"jobs wait on each other: {sorted(pending)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                job, started = running.pop(fut)
                merge(job, fut.result())
                if job.progress:
                    progress.finish(job.key, started)
