"""Train-state checkpoints: async Orbax saves of the TrainState plus a JSON "extra" item.

Layout (one Orbax CheckpointManager directory):
    DIR/<step>/state/   params, opt_state, step, rng (sharded arrays, written by all processes)
    DIR/<step>/extra/   JSON: data-iterator state, loop counters, the run's config

Saves are asynchronous: `save` returns once arrays are copied off the devices, and
the files are written in the background; a step directory appears only once fully
written, so a run killed mid-save resumes from the previous complete step.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r1ci_jax.config import ConfigError
from r1ci_jax.train.state import TrainState


class TrainCheckpointer:
    """Keep the last `keep` checkpoints of a run in `directory`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState, extra: dict[str, Any]) -> bool:
        """Start saving `state` and the JSON-able `extra` as checkpoint `step` (all processes call this)."""
        ocp = self._ocp
        args = ocp.args.Composite(state=ocp.args.StandardSave(state.to_dict()), extra=ocp.args.JsonSave(extra))
        return self._manager.save(step, args=args, force=True)

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """Read checkpoint `step` into arrays shaped, typed and sharded like `target`
        (a TrainState of jax.ShapeDtypeStruct with shardings, see state.abstract_state)."""
        ocp = self._ocp
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint for step {step}; "
                                    f"have {self.all_steps()}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target.to_dict()), extra=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return TrainState.from_dict(restored["state"]), dict(restored["extra"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def open_run_checkpointer(loop_cfg: Any, resume: bool, cleanup: Any) -> tuple["TrainCheckpointer", int | None]:
    """The run's checkpointer (closed by `cleanup`, an ExitStack) and its latest step.

    Without `resume` an existing checkpoint is an error, so a run is never silently overwritten.
    """
    checkpointer = TrainCheckpointer(loop_cfg.checkpoint_dir, keep=loop_cfg.keep_checkpoints,
                                     async_save=loop_cfg.async_checkpoint)
    cleanup.callback(checkpointer.close)
    latest = checkpointer.latest_step()
    if latest is not None and not resume:
        raise ConfigError(f"{checkpointer.directory} already holds checkpoints (latest step {latest}); "
                          "pass --resume to continue that run or choose another loop.output_dir")
    return checkpointer, latest
