"""jax_align.demo.schedule: the demo's method jobs run in dependency order, at most ``workers`` at a time, in
worker processes whose bookkeeping comes back to the parent."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pytest

from jax_align.demo.schedule import Job, run_jobs


@dataclass
class Ctx:
    timings: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


class Progress:
    def __init__(self):
        self.lines = []

    def start(self, name):
        self.lines.append(("start", name))
        return time.perf_counter()

    def finish(self, name, started):
        self.lines.append(("finish", name))


def work(ctx, name, seconds, log):
    """A job: what it saw of the shared context when it started, its process, its start and end times."""
    t0 = time.time()
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"{name} {t0} {time.time()}\n")
    return {"timings": {name: seconds}, "data": {name: {"pid": os.getpid(), "saw": sorted(ctx.data)}}, "out": name}


def fail(ctx, name):
    raise RuntimeError(f"{name} failed")


def _spans(log):
    out = {}
    for line in open(log):
        name, a, b = line.split()
        out[name] = (float(a), float(b))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_dependencies_order_and_merge(tmp_path, workers):
    log = str(tmp_path / "log")
    jobs = [Job("a", work, ("a", 0.5, log), weight=1),
            Job("b", work, ("b", 0.1, log), weight=9, needs=("a",)),  # heavier, but waits for a
            Job("c", work, ("c", 1.0, log), weight=5, progress=False)]
    ctx, progress, done = Ctx(), Progress(), []
    run_jobs(ctx, jobs, workers, progress, lambda j: done.append((j.key, j.result["out"])))
    spans = _spans(log)
    assert spans["b"][0] >= spans["a"][1]  # b started after a finished
    assert ctx.timings == {"a": 0.5, "b": 0.1, "c": 1.0}
    assert "a" in ctx.data["b"]["saw"]  # b got the context with a's results merged
    assert sorted(done) == [("a", "a"), ("b", "b"), ("c", "c")]
    assert ("start", "c") not in progress.lines and ("finish", "a") in progress.lines
    pids = {ctx.data[n]["pid"] for n in "abc"}
    if workers == 1:
        assert pids == {os.getpid()}
        assert [n for n, _ in done] == ["a", "b", "c"]  # the longest chain first: a (1) + b (9) before c (5)
    else:
        assert os.getpid() not in pids
        assert spans["c"][0] < spans["a"][1] and spans["a"][0] < spans["c"][1]  # a and c overlapped


def test_failures_and_bad_graphs(tmp_path):
    with pytest.raises(RuntimeError, match="x failed"):
        run_jobs(Ctx(), [Job("x", fail, ("x",), weight=1)], 2, Progress(), lambda j: None)
    with pytest.raises(ValueError, match="unknown"):
        run_jobs(Ctx(), [Job("x", fail, ("x",), weight=1, needs=("nope",))], 1, Progress(), lambda j: None)
    cycle = [Job("x", fail, ("x",), weight=1, needs=("y",)), Job("y", fail, ("y",), weight=1, needs=("x",))]
    for workers in (1, 2):
        with pytest.raises(RuntimeError, match="wait on each other"):
            run_jobs(Ctx(), cycle, workers, Progress(), lambda j: None)


def test_critical_path_starts_what_others_wait_for():
    from jax_align.demo.schedule import critical_path

    jobs = [Job("bdhs", fail, (), weight=75), Job("amp", fail, (), weight=150),
            Job("dpo", fail, (), weight=125, needs=("bdhs",)), Job("mmdpo", fail, (), weight=170, needs=("bdhs",))]
    assert critical_path(jobs) == {"bdhs": 245, "amp": 150, "dpo": 125, "mmdpo": 170}
