"""Training checkpoints with Orbax's CheckpointManager: asynchronous, every N steps and at the end, keep K.

A checkpoint holds the train state (trainable parameters, optimizer state, step, RNG), the data iterator
state and the resolved config. Orbax writes each step into a temporary directory and renames it when complete,
so a step interrupted mid-write is never listed by ``latest_step`` and never restored.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class TrainCheckpointer:
    def __init__(self, directory: str, *, keep: int, use_async: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=use_async)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, config: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                  config=ocp.args.JsonSave(config))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state):
        """Restore onto ``abstract_state`` (arrays or ShapeDtypeStructs carrying the target shardings), so a
        checkpoint written on one mesh restores onto another."""
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                              abstract_state)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
