"""Online-, Mixed- and Avg-DPO and Online-BDHS (the Apple study, spec §2.1-2.2): the policy samples inside the
training loop.

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
* ``online.rejected = bdhs`` (Online-BDHS, spec §2.2): instead of ranking samples, the pair of a prompt is the
  record's ground-truth answer (chosen) against the live policy's BDHS answer (rejected): image attention masked
  (rho_th), guided sentence continuations of the answer, the similarity retries, exactly as ``jax-align prefs
  bdhs`` (one implementation, :func:`jax_align.generate.bdhs.bdhs_rejected`), regenerated every round with the
  current parameters. A rejected answer equal to the chosen one drops the prompt (counted). An annotator, if
  given, only logs the scores of both sides.
* ``avg_dpo``: eq. (5), for pairwise data whose external rejected answer ``y−`` and the live policy's Online-BDHS
  answer ``ỹ−`` share the record's chosen ``y+``: ``γ L(y+, y−) + (1 − γ) L(y+, ỹ−)``, γ = 0.5
  (:data:`jax_align.train.stage_losses.AVG_GAMMA`); an example whose BDHS answer failed uses ``y−`` alone. The
  round file holds ``responses = [y+, y−, ỹ−]`` (ranked format, the pipeline's three columns).

Each round's pairs are written atomically to ``run.dir/online/round_NNNNN.jsonl`` with provenance (round,
step, ``alpha``, every sample and its score, BDHS provenance): the log of what the policy sampled, and the
online buffer. All randomness of a round derives from ``(run.seed, round)``, so a resume reuses the round file if it was
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
    bdhs_similarity: float = 0.0  # online.rejected=bdhs: mean cosine of the kept rejected answers to the chosen
    bdhs_attempts: float = 0.0  # mean BDHS attempts used

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


def _answer(group, k: int = 0) -> str:
    """The text of a record's k-th response (pairwise: 0 = chosen, 1 = rejected; SFT: the first answer)."""
    if hasattr(group, "responses"):
        return group.responses[k][0].content.strip()
    return next(m.content for m in group.messages if m.role == "assistant").strip()


def bdhs_config(on, seed: int, r: int, batch_size: int | None = None):
    """The BDHS settings of round ``r`` (spec §2.2): ``online.bdhs_*``, ``online.max_new_tokens`` per guided
    sentence, and a seed of ``(run.seed, r)`` so that a resume regenerates the same masks and pivots."""
    from jax_align.generate.bdhs import BDHSConfig

    return BDHSConfig(rho_th=on.bdhs_rho_th, attempts=on.bdhs_attempts, sim_threshold=on.bdhs_sim_threshold,
                      max_new_tokens=on.max_new_tokens, seed=int(seed) * 1_000_003 + r,
                      batch_size=batch_size or on.batch_size)


class OnlineRounds:
    """Writes the pairs of each round; ``params_fn()`` returns the policy's current full parameter state."""

    def __init__(self, cfg, data_path: str, model_dir: str, model_config, graphdef_full,
                 params_fn: Callable[[], Any], annotator: Annotator, *, mixed: bool, prompts_per_round: int):
        from .stages import get_stage

        self.cfg = cfg
        self.kind = get_stage(cfg.run.stage).online or ("mixed" if mixed else "online")
        self.mixed = self.kind == "mixed"
        self.bdhs = cfg.online.rejected == "bdhs"
        if self.kind == "avg" and not self.bdhs:
            raise ValueError(f"run.stage={cfg.run.stage} averages the record's rejected answer with the live "
                             f"policy's Online-BDHS answer (spec §2.1 eq. 5): online.rejected must be bdhs")
        if not self.bdhs and annotator is None:
            raise ValueError(f"run.stage={cfg.run.stage} with online.rejected=annotator needs an annotator "
                             f"(online.annotator=world:DIR or reward:MODEL)")
        self._embedder = None
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

    def embedder(self):
        if self._embedder is None:
            from jax_align.embedders import SentenceEmbedder

            self._embedder = SentenceEmbedder.from_path(self.cfg.online.bdhs_embedder or None)
        return self._embedder

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
        on = self.cfg.online
        stats = RoundStats()
        idx = self._round_indices(r)
        rng = np.random.default_rng([self.cfg.run.seed, 11, r])
        alphas = (rng.random(len(idx)) < on.mix_p).astype(int) if self.mixed else np.zeros(len(idx), int)
        stats.prompts = len(idx)
        need = [j for j, a in enumerate(alphas) if a == 0]
        prompts, groups = [], []
        for j in range(len(idx)):
            p, g = self._prompt(self.records[idx[j]])
            prompts.append(p)
            groups.append(g)
        t0 = time.perf_counter()
        bdhs: list = []
        if self.bdhs:  # Online-BDHS (spec §2.2): the live policy's masked, guided answer is the rejected side
            from jax_align.generate.bdhs import bdhs_rejected

            answers = [_answer(groups[j]) for j in need]
            bdhs = bdhs_rejected(self.generator(), [prompts[j] for j in need], answers, embedder=self.embedder(),
                                 cfg=bdhs_config(on, self.cfg.run.seed, r)) if need else []
            samples = [[a, b.rejected] for a, b in zip(answers, bdhs, strict=True)]
        elif need:
            from jax_align.sampling import SamplingParams

            sp = SamplingParams(max_new_tokens=on.max_new_tokens, temperature=on.temperature, top_p=on.top_p,
                                n_samples=on.samples)
            outs = self.generator().generate([prompts[j] for j in need], sp, batch_size=on.batch_size,
                                             seed=int(self.cfg.run.seed) * 1_000_003 + r)
            samples = [[t.strip() for t in o.texts] for o in outs]
        else:
            samples = []
        stats.seconds_sampling = time.perf_counter() - t0
        stats.sampled = len(bdhs) if self.bdhs else sum(len(x) for x in samples)
        t0 = time.perf_counter()
        # annotators read the records from elsewhere (a reward model scores a temporary file): absolute image paths
        judged = [_absolute_images(self.records[idx[j]], self.source.base_dir) for j in need]
        scores = self.annotator.annotate(judged, samples) if need and self.annotator is not None else \
            [[None] * len(x) for x in samples]
        stats.seconds_annotating = time.perf_counter() - t0
        rows: list[dict | None] = [None] * len(idx)
        scored = 0
        for j, a in enumerate(alphas):
            rec = self.records[idx[j]]
            question = _question(groups[j]) if hasattr(groups[j], "prompt") else None
            out = {k: v for k, v in rebase_images(rec, self.source.base_dir, self.dir).items()
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
            out["online"].update(samples=texts, scores=sc)
            if self.bdhs:
                chosen, rejected = texts
                out["online"]["bdhs"] = bdhs[k].provenance()
                usable = bool(rejected) and rejected != chosen
                if self.kind == "avg":  # eq. (5): y+, the record's y-, and the policy's y~- when it differs
                    external = _answer(groups[j], 1)
                    out["responses"] = [chosen, external] + ([rejected] if usable else [])
                    out["online"]["rejected_external"] = external
                elif not usable:
                    stats.dropped += 1  # the masked policy wrote the answer itself: no pair
                    continue
                else:
                    out["chosen"], out["rejected"] = chosen, rejected
                if usable:
                    stats.online_pairs += 1
                    stats.bdhs_similarity += bdhs[k].similarity
                    stats.bdhs_attempts += bdhs[k].attempts
                if sc[0] is not None and sc[1] is not None:
                    scored += 1
                    stats.chosen_score += sc[0]
                    stats.rejected_score += sc[1]
                rows[j] = out
                continue
            known = [(s, t) for s, t in zip(sc, texts, strict=True) if s is not None and t]
            if len(known) < 2 or max(s for s, _ in known) == min(s for s, _ in known) or \
                    len({t for _, t in known}) < 2:
                stats.dropped += 1  # tie or undecidable: no pair (spec §2.1 needs a ranking)
                continue
            best = max(known, key=lambda st: st[0])
            worst = min(known, key=lambda st: st[0])
            out["chosen"], out["rejected"] = best[1], worst[1]
            stats.online_pairs += 1
            scored += 1
            stats.chosen_score += best[0]
            stats.rejected_score += worst[0]
            rows[j] = out
        if scored:
            stats.chosen_score /= scored
            stats.rejected_score /= scored
        if self.bdhs and stats.online_pairs:
            stats.bdhs_similarity /= stats.online_pairs
            stats.bdhs_attempts /= stats.online_pairs
        kept = [row for row in rows if row is not None]
        if not kept:
            who = "BDHS answers equal to the chosen ones" if self.bdhs else \
                f"ties or undecidable annotations, annotator {self.annotator.name}"
            raise ValueError(f"online round {r}: every prompt was dropped ({who}); nothing to train on")
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
    """The round pipeline: the trainer's data config over a round file, pairwise (Avg-DPO's three columns
    ``[y+, y−, ỹ−]``: ranked), in file order, repeating. The round file's image paths point back to the source
    data's images (checked under the user's data.allow_absolute_paths when the source was read), so they may
    leave run.dir/online."""
    fmt = "ranked" if dcfg.responses_per_group > 2 else "pairwise"
    return replace(dcfg, path=path, format=fmt, shuffle=False, num_epochs=None, required_fields=(),
                   allow_absolute_paths=True, pair_from_ranked=False)


class RewardModelAnnotator:
    """A ``reward`` / ``critique_reward`` run's model as the annotator: the sample with the higher scalar reward
    is preferred (a critique-based model writes its greedy critique of each sample first, spec §4.2)."""

    def __init__(self, model_dir: str, *, batch_size: int = 8, buckets=None):
        from .reward_head import load_head

        load_head(model_dir)  # fail now, naming the directory, if it has no head
        self.model_dir, self.batch_size, self.buckets = model_dir, batch_size, buckets  # None: score_file's ladder
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
