"""Training checkpoints with Orbax's CheckpointManager: asynchronous, every N steps and at the end, keep K.

A checkpoint holds the train state (trainable parameters, optimizer state, step, RNG), the data iterator
state, the resolved config and its fingerprint (:func:`fingerprint`). Orbax writes each step into a temporary
directory and renames it when complete, so a step interrupted mid-write is never listed and never restored.

Faults, each reported in one line and never by deleting a checkpoint:

* :meth:`TrainCheckpointer.restore_latest` tries the checkpoints newest first; one that cannot be read is
  reported (step and cause), moved aside as ``STEP.corrupt`` (kept for inspection, out of Orbax's way) and the
  next older one is tried.
* A full disk (``ENOSPC``) while saving raises :class:`CheckpointError` naming the path and the free space; the
  partial step is removed, every complete checkpoint is kept.
* :meth:`TrainCheckpointer.restore_step` restores a given step (``checkpoint.resume=STEP``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable

import jax
import orbax.checkpoint as ocp

from jax_align.disk import ensure_room, free_space, is_enospc, tree_nbytes
from jax_align.orbax_logs import quiet_orbax_errors

# Config fields that make resuming meaningless when they change (dotted keys of Config.to_dict()).
FINGERPRINT_KEYS = (
    "run.stage",
    "run.seed",
    "model.path",
    "model.init",
    "model.tokenizer",
    "model.param_dtype",
    "model.train_vision",
    "model.train_projector",
    "model.train_language",
    "model.scan_layers",
    "online.every",
    "online.samples",
    "online.annotator",
    "online.mix_p",
    "data.train",
    "data.world.seed",
    "data.world.n",
    "data.format",
    "data.layout",
    "data.num_responses",
    "data.max_length",
    "data.buckets",
    "data.batch_size",
    "data.pack",
    "optim.grad_accum",
    "lora.rank",
    "lora.alpha",
    "lora.targets",
    "ref.mode",
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or written; the message is one line naming the step or path."""


def fingerprint(cfg: dict) -> dict:
    """The fields of a resolved config (``Config.to_dict()``) that a checkpoint must agree with to resume.

    Missing keys (older configs, optional sections) are left out; ``check_fingerprint`` compares the union."""
    out = {}
    for key in FINGERPRINT_KEYS:
        node = cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            out[key] = _canonical(node)
    return out


def _canonical(value):
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    return value


def check_fingerprint(saved: dict | None, current: dict) -> list[str]:
    """Keys whose values differ between a checkpoint's fingerprint and the current one (sorted)."""
    if saved is None:
        return []
    keys = set(saved) | set(current)
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def describe_mismatch(saved: dict, current: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys)


def _cause(exc: BaseException) -> str:
    """The innermost useful message of an exception chain, on one line."""
    seen = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(seen):
        text = " ".join(str(e).split())
        if text:
            name = type(e).__name__
            return (f"{name}: {text}" if name not in text else text)[:400]
    return type(exc).__name__


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


class TrainCheckpointer:
    def __init__(self, directory: str, *, keep: int, use_async: bool = True,
                 report: Callable[[str], None] = _say):
        self.directory = os.path.abspath(directory)
        self.report = report
        quiet_orbax_errors()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=use_async)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending_step: int | None = None

    # ------------------------------------------------------------------------------------------- listing
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Complete checkpoints, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    # ------------------------------------------------------------------------------------------- saving
    def save(self, step: int, state, data_state: dict, config: dict, fingerprint_: dict | None = None) -> None:
        """Save (asynchronously) step ``step``; a full disk raises :class:`CheckpointError` in one line."""
        args = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state),
                "config": ocp.args.JsonSave(config),
                "fingerprint": ocp.args.JsonSave(fingerprint_ if fingerprint_ is not None else fingerprint(config))}
        with self._disk_guard(step):
            self.wait()  # a failed earlier asynchronous save surfaces here, named by its own step
            ensure_room(self.step_dir(step), tree_nbytes(state), f"checkpoint step {step}")
            self.manager.save(step, args=ocp.args.Composite(**args), force=True)
        self._pending_step = step

    def _disk_guard(self, step: int | None):
        ckpt = self

        class _Guard:
            def __enter__(self):
                return self

            def __exit__(self, exc_type, exc, tb):
                if exc is None or not isinstance(exc, Exception) or isinstance(exc, CheckpointError):
                    return False
                partial = ckpt._partial_steps()  # an asynchronous save fails at the next save or wait
                failed = partial[0] if partial else (step if step is not None else ckpt._pending_step)
                where = ckpt.step_dir(failed) if failed is not None else ckpt.directory
                if is_enospc(exc):
                    ckpt._remove_partial()
                    kept = ckpt._complete_steps_on_disk()
                    raise CheckpointError(
                        f"{where}: disk full while saving checkpoint step {failed} ({free_space(ckpt.directory)}); "
                        f"the partial step was removed, complete checkpoints kept: steps {kept or 'none'}") from exc
                raise CheckpointError(f"{where}: saving checkpoint step {failed} failed: {_cause(exc)}") from exc

        return _Guard()

    def _partial_steps(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        names = [n.split(".", 1)[0] for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n]
        return sorted(int(n) for n in names if n.isdigit())

    def _remove_partial(self) -> None:
        """Remove Orbax's temporary directories of failed saves (never a complete checkpoint)."""
        if not os.path.isdir(self.directory) or jax.process_index() != 0:
            return
        for name in os.listdir(self.directory):
            if ".orbax-checkpoint-tmp" in name:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def _complete_steps_on_disk(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def wait(self) -> None:
        with self._disk_guard(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    # ------------------------------------------------------------------------------------------- restoring
    def restore(self, step: int, abstract_state):
        """Restore onto ``abstract_state`` (arrays or ShapeDtypeStructs carrying the target shardings), so a
        checkpoint written on one mesh restores onto another."""
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                              abstract_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored["state"], restored["data"]

    def restore_step(self, step: int, abstract_state, *, set_aside_newer: bool = True):
        """``(state, data_state)`` of checkpoint ``step`` (``checkpoint.resume=STEP``); one-line errors.

        ``set_aside_newer``: checkpoints after ``step`` belong to the abandoned continuation; they are renamed
        ``STEP.superseded`` (kept, reported) so that the resumed run can save those steps again."""
        steps = self.all_steps()
        if step not in steps:
            raise CheckpointError(f"{self.step_dir(step)}: no checkpoint of step {step} "
                                  f"(complete checkpoints: {sorted(steps) or 'none'})")
        try:
            restored = self.restore(step, abstract_state)
        except Exception as e:
            raise CheckpointError(f"{self.step_dir(step)}: checkpoint step {step} is unreadable: {_cause(e)}") from e
        if set_aside_newer:
            for newer in sorted(s for s in steps if s > step):
                kept = self._set_aside(newer, "superseded")
                self.report(f"checkpoint step {newer} in {self.directory} follows the resumed step {step}: "
                            f"kept as {kept}")
        return restored

    def restore_latest(self, abstract_state):
        """``(step, state, data_state)`` of the newest readable checkpoint, or ``None`` when there is none.

        Unreadable ones are reported in one line each and moved aside as ``STEP.corrupt`` (never deleted);
        when every checkpoint is unreadable, :class:`CheckpointError` names them all."""
        failures = []
        for step in self.all_steps():
            try:
                state, data = self.restore(step, abstract_state)
            except Exception as e:
                cause = _cause(e)
                failures.append(f"step {step}: {cause}")
                kept = self._set_aside(step)
                self.report(f"checkpoint step {step} in {self.directory} is unreadable, skipped "
                            f"(kept as {kept}): {cause}")
                continue
            return step, state, data
        if failures:
            raise CheckpointError(f"{self.directory}: no readable checkpoint ({'; '.join(failures)})")
        return None

    def _set_aside(self, step: int, why: str = "corrupt") -> str:
        src = self.step_dir(step)
        dst = f"{src}.{why}"
        n = 1
        while os.path.exists(dst):
            n += 1
            dst = f"{src}.{why}{n}"
        if jax.process_index() == 0:
            try:
                os.rename(src, dst)
            except OSError:
                return src
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jax_align.ckpt.set_aside.{step}")
        self.manager.reload()
        return dst

    def last_good_step(self, nonfinite_step: int) -> int | None:
        """The newest checkpoint whose parameters are known to give a finite loss, after step
        ``nonfinite_step`` gave a non-finite one. The loss of step N is computed from the parameters saved as
        checkpoint N-1, so N-1 is poisoned; checkpoint s is good when step s+1 ran with a finite loss, i.e.
        s <= N-2. ``None`` when there is none (call :meth:`wait` first so pending saves are listed)."""
        good = [s for s in self.all_steps() if s <= nonfinite_step - 2]
        return max(good) if good else None

    # ------------------------------------------------------------------------------------------- metadata
    def read_config(self, step: int) -> dict | None:
        return self._read_json(step, "config")

    def read_fingerprint(self, step: int) -> dict | None:
        """The fingerprint of checkpoint ``step``: recomputed from its saved config (so fingerprints compare
        under the current definition), else the stored one; ``None`` when neither can be read."""
        cfg = self.read_config(step)
        if cfg is not None:
            return fingerprint(cfg)
        return self._read_json(step, "fingerprint")

    def _read_json(self, step: int, item: str) -> dict | None:
        path = os.path.join(self.step_dir(step), item, "metadata")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None


RESUME_MODES = ("auto", "never", "force")


def parse_resume(value) -> str | int:
    """``checkpoint.resume``: ``auto`` | ``never`` | ``force`` | a step number (one-line error otherwise)."""
    text = str(value).strip().lower()
    if text in RESUME_MODES:
        return text
    if text.isdigit():
        return int(text)
    raise CheckpointError(f"checkpoint.resume must be auto, never, force or a step number, got {value!r}")


def check_resume(ckpt: TrainCheckpointer, resume, current_fingerprint: dict | None) -> None:
    """The fingerprint check of :func:`resume_state` alone, before anything is written to the run directory
    (so a refused resume leaves the old run's ``config.yaml`` as it was)."""
    mode = parse_resume(resume)
    if isinstance(mode, int):
        if mode not in ckpt.all_steps():
            raise CheckpointError(f"{ckpt.step_dir(mode)}: checkpoint.resume={mode}: no such checkpoint "
                                  f"(have {ckpt.all_steps() or 'none'})")
        _check_compatible(ckpt, mode, current_fingerprint)
    elif mode == "auto":
        for step in ckpt.all_steps():
            if ckpt.read_config(step) is not None:
                _check_compatible(ckpt, step, current_fingerprint)
                break


def resume_state(ckpt: TrainCheckpointer, abstract_state, resume, current_fingerprint: dict | None = None):
    """What the trainer starts from: ``(step, state, data_state)``, ``(0, None, None)`` for a fresh start.

    ``auto``: the newest readable checkpoint (corrupt ones reported and set aside), refused with the differing
    config keys when its fingerprint differs from ``current_fingerprint``; ``force``: the same without the
    fingerprint check; ``never``: a fresh start; a step number: that checkpoint (fingerprint checked; newer ones
    set aside as ``STEP.superseded``)."""
    mode = parse_resume(resume)
    if mode == "never":
        return 0, None, None
    if isinstance(mode, int):
        _check_compatible(ckpt, mode, current_fingerprint)
        state, data = ckpt.restore_step(mode, abstract_state)
        return mode, state, data
    if mode == "auto":
        for step in ckpt.all_steps():  # the newest whose config can be read decides (it is what resumes)
            if ckpt.read_config(step) is not None:
                _check_compatible(ckpt, step, current_fingerprint)
                break
    found = ckpt.restore_latest(abstract_state)
    if found is None:
        return 0, None, None
    return found


def _check_compatible(ckpt: TrainCheckpointer, step: int, current: dict | None) -> None:
    if current is None:
        return
    saved = ckpt.read_fingerprint(step)
    keys = check_fingerprint(saved, current)
    if keys:
        raise CheckpointError(
            f"{ckpt.step_dir(step)}: checkpoint step {step} was written with a different config "
            f"({describe_mismatch(saved, current, keys)}); use a new run.dir, or checkpoint.resume=force to resume "
            "anyway")
