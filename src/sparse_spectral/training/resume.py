"""What a resumed run carries over and what it may change.

:class:`RunHistory` is the part of a run's record that lives only in memory (step times,
evaluations, skipped-step and update counts, the measured state bytes, earlier resumes); it
is checkpointed with the rest, so a resumed run's ``summary.json`` covers the whole run, not
the segment since the last resume.

:func:`check_resume_settings` compares the settings a checkpoint recorded with a resumed
run's. Only :data:`MAY_CHANGE` settings may differ, and they are applied: the new values
are recorded in every later checkpoint and each resume's changes are listed in the
summary's ``resumes``. Changing ``num_training_steps`` (or ``epochs``) extends or shortens a
run: the learning-rate schedule is the new total's from the resumed step on. Any other
difference (learning rate, seed, rank, T3, model, block size, data, precision, ...)
would make the run a different one than its checkpoint continues, so it is refused,
naming each setting with its recorded and its new value.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

#: Settings (leaf field names, in any section) a resume may change.
MAY_CHANGE = frozenset({
    "num_training_steps", "epochs",                    # extend (or shorten) the run
    "eval_every", "log_every", "save_every",           # how often it reports and saves
    "tensorboard", "output_dir", "overwrite",          # where it writes (the folder may move)
    "divergence_factor",                               # when it stops (the guard)
    "device", "compile", "compile_backend",            # where and how it runs (same math up to
    "dist_timeout_s", "parallel",                      #   rounding; world size checked apart)
    "data_dir",                                        # where the (checksummed) data are
})


def _leaves(settings: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 1e-3, "method.options.sampler": ..., ...}`` of a nested dict."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and (value or key != "options"):
            out.update(_leaves(value, path + "."))
        else:
            out[path] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def resume_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{setting: (recorded, new)}`` for every setting both record that differs.

    Method options are compared one by one (an option only one side sets counts as a
    change from or to None).
    """
    old_leaves, new_leaves = _leaves(saved), _leaves(new)
    changed = {}
    for path in sorted(set(old_leaves) | set(new_leaves)):
        in_both = path in old_leaves and path in new_leaves
        if not in_both and ".options." not in path:
            continue  # a field one version has and the other not: not a user's change
        old, now = old_leaves.get(path), new_leaves.get(path)
        if not _same(old, now):
            changed[path] = (old, now)
    return changed


def check_resume_settings(saved: dict[str, Any], new: dict[str, Any], step: int,
                          checkpoint: Any) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume whose settings differ from the checkpoint's beyond :data:`MAY_CHANGE`;
    return the allowed changes.

    Raises:
        ValueError: every refused setting at once, each with its recorded and new value; or
            a ``num_training_steps`` below the checkpoint's step.
    """
    changes = resume_changes(saved, new)
    refused = {path: pair for path, pair in changes.items()
               if path.rsplit(".", 1)[-1] not in MAY_CHANGE}
    if refused:
        listed = "; ".join(f"{path}: checkpoint {old!r}, now {now!r}"
                           for path, (old, now) in refused.items())
        allowed = ", ".join(sorted(MAY_CHANGE))
        raise ValueError(f"--resume from {checkpoint}: this run's settings differ from the "
                         f"ones it was trained with ({listed}). Resume with the recorded "
                         f"values, or start a new run (--overwrite or another --output_dir); "
                         f"a resume may change only: {allowed}")
    for path, (_, now) in changes.items():
        if path.endswith("num_training_steps") and isinstance(now, int) and now < step:
            raise ValueError(f"--resume from {checkpoint}: num_training_steps {now} is below "
                             f"the checkpoint's step {step}")
    return changes


def _plain(value: Any) -> Any:
    """A value ``torch.load(weights_only=True)`` reads back: numpy scalars and the like
    become Python numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


class RunHistory:
    """A :class:`~.loop.TrainResult`'s whole-run record, as checkpointed state.

    ``resumes``: one entry per resume, ``{"step", "checkpoint", "changed": {setting: [old,
    new]}}``.
    """

    def __init__(self, result):
        self.result = result

    @property
    def resumes(self) -> list[dict[str, Any]]:
        return self.result.resumes

    @property
    def updates(self) -> int:
        """Optimizer updates so far (steps less those the fp16 scaler skipped)."""
        return len(self.result.step_times) - self.result.skipped_steps

    def state_dict(self) -> dict[str, Any]:
        r = self.result
        return {"step_times": torch.tensor(r.step_times, dtype=torch.float64),
                "evaluations": _plain(r.evaluations), "skipped_steps": r.skipped_steps,
                "updates": self.updates, "grad_optimizer_bytes": r.grad_optimizer_bytes,
                "resumes": _plain(r.resumes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r = self.result
        r.step_times[:] = state["step_times"].tolist()
        r.evaluations[:] = [dict(e) for e in state["evaluations"]]
        r.skipped_steps = int(state["skipped_steps"])
        r.grad_optimizer_bytes = int(state["grad_optimizer_bytes"])
        r.resumes[:] = [dict(x) for x in state.get("resumes", [])]
