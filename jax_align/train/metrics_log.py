"""Observability: ``metrics.jsonl`` (one object per logged step), TensorBoard events, a progress bar."""

from __future__ import annotations

import json
import math
import os
import time


class MetricsLog:
    """Appends one JSON object per step to ``run_dir/metrics.jsonl`` and mirrors scalars to TensorBoard.

    On resume, lines for steps after the restored step (written before an interruption) are dropped, so the
    file always describes one consistent run.
    """

    def __init__(self, run_dir: str, start_step: int = 0, tensorboard: bool = True, enabled: bool = True):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.enabled = enabled
        self._file, self._tb = None, None
        if not enabled:  # non-primary processes of a multi-host run write nothing
            return
        if os.path.exists(self.path):
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line).get("step", 0) <= start_step:
                            kept.append(line)
                    except json.JSONDecodeError:
                        break  # a torn last line from a killed run
            with open(self.path, "w") as f:
                f.writelines(kept)
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                self._tb = None

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A tqdm bar with loss, reward accuracy, tokens/s and ETA (tqdm's own)."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=0.5)
        self._t0, self._tokens = time.perf_counter(), 0

    def update(self, metrics: dict, tokens: int) -> None:
        self._tokens += tokens
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        post = {"loss": f"{metrics.get('loss', float('nan')):.4f}", "tok/s": f"{self._tokens / elapsed:.0f}"}
        if "rewards/accuracies" in metrics:
            post["acc"] = f"{metrics['rewards/accuracies']:.2f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
