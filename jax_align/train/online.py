"""Online and Mixed DPO (the Apple study, spec §2.1): the policy samples inside the training loop.

Training runs in *rounds* of ``online.every`` optimizer steps. At the start of round ``r`` the current policy
(the same sharded parameters the step updates: no export, no second copy beyond the reference) samples
``online.samples`` responses (default 2, the annotator compares "Response 1 vs Response 2") for the round's
prompts, an annotator scores them (higher = better, :mod:`jax_align.preference`), and the best and the worst
sample become the online pair ``(ỹ+, ỹ−)``; a tie or an undecidable annotation drops the prompt and is counted.

* ``online_dpo``: the round's pairs are all online pairs.
* ``mixed_dpo``: eq. (4), ``α ~ Bernoulli(p = online.mix_p)`` per prompt picks the offline pair of the record
  (``α = 1``) or the online pair (``α = 0``); only ``α = 0`` prompts are sampled. Since each example's loss is
  ``α L(offline) + (1 − α) L(online)`` with ``α`` in {0, 1}, the round file holds exactly the selected pair per
  prompt and the step is plain DPO on it (``losses.mixed_dpo`` of the logged terms equals it: tested).

Each round's pairs are written atomically to ``run.dir/online/round_NNNNN.jsonl`` with provenance (round,
step, ``alpha``, every sample and its score): the log of what the policy sampled, and the online buffer. All
randomness of a round derives from ``(run.seed, round)``, so a resume reuses the round file if it was
written and otherwise regenerates it from the checkpoint's parameters: resumes are exact.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from jax_align.atomic import atomic_file
from jax_align.data.image_paths import rebase_images
from jax_align.data.readers import open_records
from jax_align.data.records import parse_record


class Annotator(Protocol):
    """Scores samples: ``annotate(records, samples) -> scores``; ``scores[i][j]`` is the score of sample ``j``
    of record ``i`` (higher = better) or ``None`` when the annotator cannot decide (the pair is dropped)."""

    name: str

    def annotate(self, records: Sequence[dict], samples: Sequence[Sequence[str]]) -> list[list[float | None]]: ...


@dataclass
class RoundStats:
    prompts: int = 0
    sampled: int = 0
    online_pairs: int = 0
    offline_pairs: int = 0
    dropped: int = 0
    chosen_score: float = 0.0
    rejected_score: float = 0.0
    seconds_sampling: float = 0.0
    seconds_annotating: float = 0.0

    def metrics(self) -> dict[str, float]:
        return {f"online/{k}": float(v) for k, v in self.__dict__.items()}


def _absolute_images(record: dict, base_dir: str) -> dict:
    out = dict(record)
    for key in ("image", "images"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = value if os.path.isabs(value) else os.path.join(base_dir, value)
        elif isinstance(value, list):
            out[key] = [v if not isinstance(v, str) or os.path.isabs(v) else os.path.join(base_dir, v) for v in value]
    return out


def _question(group) -> str:
    return " ".join(m.content for m in group.prompt if m.role == "user").strip()


class OnlineRounds:
    """Writes the pairs of each round; ``params_fn()`` returns the policy's current full parameter state."""

    def __init__(self, cfg, data_path: str, model_dir: str, model_config, graphdef_full,
                 params_fn: Callable[[], Any], annotator: Annotator, *, mixed: bool, prompts_per_round: int):
        self.cfg = cfg
        self.mixed = mixed
        self.prompts_per_round = prompts_per_round
        self.annotator = annotator
        self.params_fn = params_fn
        self.dir = os.path.join(cfg.run.dir, "online")
        self.source = open_records(data_path)
        self.records = [raw.data for raw in self.source]
        if not self.records:
            raise ValueError(f"{data_path}: no prompts for the online loop")
        self._generator = None
        self._model_config = model_config
        self._graphdef_full = graphdef_full
        self._model_dir = model_dir
        self.last_stats = RoundStats()

    def path(self, r: int) -> str:
        return os.path.join(self.dir, f"round_{r:05d}.jsonl")

    def _round_indices(self, r: int) -> list[int]:
        """The prompts of round r: consecutive slices of a per-epoch permutation seeded by (run.seed, epoch)."""
        n, k = len(self.records), self.prompts_per_round
        out = []
        start = r * k
        for pos in range(start, start + k):
            epoch, i = divmod(pos, n)
            perm = np.random.default_rng([self.cfg.run.seed, 7, epoch]).permutation(n)
            out.append(int(perm[i]))
        return out

    def generator(self):
        if self._generator is None:
            from jax_align.data.images import ImageProcessorConfig
            from jax_align.data.tokenize import ChatTokenizer
            from jax_align.generate import Generator, _generation_eos_ids

            self._generator = Generator(self._model_config, self._graphdef_full, self.params_fn(),
                                        ChatTokenizer.from_model_dir(self._model_dir),
                                        ImageProcessorConfig.from_model_dir(self._model_dir),
                                        extra_eos_ids=_generation_eos_ids(self._model_dir))
        self._generator.sampler.params = self.params_fn()  # the current policy, same arrays as the train state
        return self._generator

    def _prompt(self, rec: dict) -> tuple[dict, Any]:
        fmt = "pairwise" if ("chosen" in rec or "rejected" in rec) else "sft"
        group, problems = parse_record(rec, fmt, base_dir=self.source.base_dir,
                                       allow_absolute_paths=self.cfg.data.allow_absolute_paths)
        if group is None:
            field, message = problems[0]
            raise ValueError(f"{self.source.path}: {field}: {message}")
        if fmt == "sft":
            msgs = [m for m in group.messages]
            cut = next(i for i, m in enumerate(msgs) if m.role == "assistant")
            prompt_msgs = msgs[:cut]
        else:
            prompt_msgs = list(group.prompt)
        images = [ref.path if ref.path is not None else ref.data for ref in group.images]
        return {"messages": [{"role": m.role, "content": m.content} for m in prompt_msgs], "image": images}, group

    def write_round(self, r: int, step: int) -> str:
        """Sample, annotate and write round ``r``'s pairs (or reuse the file written before a resume)."""
        path = self.path(r)
        if os.path.isfile(path):
            return path
        from jax_align.sampling import SamplingParams

        on = self.cfg.online
        stats = RoundStats()
        idx = self._round_indices(r)
        rng = np.random.default_rng([self.cfg.run.seed, 11, r])
        alphas = (rng.random(len(idx)) < on.mix_p).astype(int) if self.mixed else np.zeros(len(idx), int)
        stats.prompts = len(idx)
        rows: list[dict | None] = [None] * len(idx)
        need = [j for j, a in enumerate(alphas) if a == 0]
        prompts, groups = [], []
        for j in range(len(idx)):
            p, g = self._prompt(self.records[idx[j]])
            prompts.append(p)
            groups.append(g)
        t0 = time.perf_counter()
        samples: list[list[str]] = []
        if need:
            sp = SamplingParams(max_new_tokens=on.max_new_tokens, temperature=on.temperature, top_p=on.top_p,
                                n_samples=on.samples)
            outs = self.generator().generate([prompts[j] for j in need], sp, batch_size=on.batch_size,
                                            seed=int(self.cfg.run.seed) * 1_000_003 + r)
            samples = [[t.strip() for t in o.texts] for o in outs]
        stats.seconds_sampling = time.perf_counter() - t0
        stats.sampled = sum(len(s) for s in samples)
        t0 = time.perf_counter()
        # annotators read the records from elsewhere (a reward model scores a temporary file): absolute image paths
        judged = [_absolute_images(self.records[idx[j]], self.source.base_dir) for j in need]
        scores = self.annotator.annotate(judged, samples) if need else []
        stats.seconds_annotating = time.perf_counter() - t0
        base_out = self.dir
        for j, a in enumerate(alphas):
            rec = self.records[idx[j]]
            question = _question(groups[j]) if hasattr(groups[j], "prompt") else None
            out = {k: v for k, v in rebase_images(rec, self.source.base_dir, base_out).items()
                   if k in ("id", "image", "images")}
            out["prompt"] = prompts[j]["messages"][-1]["content"] if question is None else question
            out["online"] = {"round": r, "step": step, "record": idx[j], "alpha": int(a)}
            if a == 1:
                out["chosen"], out["rejected"] = rec["chosen"], rec["rejected"]
                stats.offline_pairs += 1
                rows[j] = out
                continue
            k = need.index(j)
            texts, sc = samples[k], scores[k]
            known = [(s, t) for s, t in zip(sc, texts, strict=True) if s is not None and t]
            out["online"].update(samples=texts, scores=sc)
            if len(known) < 2 or max(s for s, _ in known) == min(s for s, _ in known) or \
                    len({t for _, t in known}) < 2:
                stats.dropped += 1  # tie or undecidable: no pair (spec §2.1 needs a ranking)
                continue
            best = max(known, key=lambda st: st[0])
            worst = min(known, key=lambda st: st[0])
            out["chosen"], out["rejected"] = best[1], worst[1]
            stats.online_pairs += 1
            stats.chosen_score += best[0]
            stats.rejected_score += worst[0]
            rows[j] = out
        if stats.online_pairs:
            stats.chosen_score /= stats.online_pairs
            stats.rejected_score /= stats.online_pairs
        kept = [row for row in rows if row is not None]
        if not kept:
            raise ValueError(f"online round {r}: every prompt was dropped (ties or undecidable annotations, "
                             f"annotator {self.annotator.name}); nothing to train on")
        os.makedirs(self.dir, exist_ok=True)
        with atomic_file(path) as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")
        with atomic_file(path + ".stats.json") as f:
            json.dump(stats.metrics(), f)
        self.last_stats = stats
        return path

    def stats_of(self, r: int) -> dict[str, float]:
        try:
            with open(self.path(r) + ".stats.json") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}


class OnlineIterator:
    """The trainer's batch iterator for online stages: one data pipeline per round over the round's pairs.

    State (checkpointed with the model): the round and the round pipeline's own iterator state."""

    def __init__(self, rounds: OnlineRounds, make_pipeline: Callable[[str], Any], every: int, start_step: int):
        self.rounds, self.make_pipeline, self.every = rounds, make_pipeline, every
        self.step = start_step  # optimizer steps taken so far
        self.round = None
        self._iter = None
        self._restored: dict | None = None  # a checkpointed state, applied when its round is entered

    def __next__(self):
        r = self.step // self.every
        if r != self.round:
            inner = None
            if self._restored is not None and self._restored.get("round") == r:
                inner = self._restored.get("inner")
            self._restored = None
            path = self.rounds.write_round(r, self.step)
            if self._iter is not None:
                self._iter.close()
            self._iter = self.make_pipeline(path).iterator(inner)
            self.round = r
        self.step += 1
        return next(self._iter)

    def metrics(self) -> dict[str, float]:
        out = dict(self._iter.metrics()) if self._iter is not None else {}
        out.update(self.rounds.stats_of(self.round) if self.round is not None else {})
        out["online/round"] = float(self.round or 0)
        return out

    def get_state(self) -> dict:
        return {"round": self.round, "step": self.step,
                "inner": None if self._iter is None else self._iter.get_state()}

    def set_state(self, state: dict | None) -> None:
        if state:
            self.step = int(state["step"])
            self._restored = dict(state)

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()


def online_pipeline_config(dcfg, path: str):
    """The round pipeline: the trainer's data config over a round file, pairwise, in file order, repeating. The
    round file's image paths point back to the source data's images (checked under the user's
    data.allow_absolute_paths when the source was read), so they may leave run.dir/online."""
    return replace(dcfg, path=path, format="pairwise", shuffle=False, num_epochs=None, required_fields=(),
                   allow_absolute_paths=True, pair_from_ranked=False)


class RewardModelAnnotator:
    """A ``reward`` / ``critique_reward`` run's model as the annotator: the sample with the higher scalar reward
    is preferred (a critique-based model writes its greedy critique of each sample first, spec §4.2)."""

    def __init__(self, model_dir: str, *, batch_size: int = 8, buckets=(256, 512, 1024)):
        from .reward_head import load_head

        load_head(model_dir)  # fail now, naming the directory, if it has no head
        self.model_dir, self.batch_size, self.buckets = model_dir, batch_size, tuple(buckets)
        self.name = f"reward:{model_dir}"

    def annotate(self, records, samples):
        import tempfile

        from .score import score_file

        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "samples.jsonl")
            with open(src, "w") as f:
                for rec, texts in zip(records, samples, strict=True):
                    row = {k: v for k, v in rec.items() if k in ("image", "images", "prompt", "conversations")}
                    if "prompt" not in row:
                        row["prompt"] = next(t["value"] for t in rec["conversations"] if t["from"] == "human")
                        row.pop("conversations", None)
                    row["responses"] = [t or " " for t in texts]
                    row["scores"] = [0.0] * len(texts)  # placeholder: the file is scored in its own order
                    f.write(json.dumps(row) + "\n")
            out = os.path.join(tmp, "scored.jsonl")
            score_file(self.model_dir, src, out, fmt="scored", batch_size=self.batch_size, buckets=self.buckets)
            with open(out) as f:
                return [r.get("rewards") or [None] * len(t) for r, t in zip(map(json.loads, f), samples,
                                                                              strict=True)]
