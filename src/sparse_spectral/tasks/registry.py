"""The registry of tasks: ``sst train|compare|ablate TASK`` are generic over it."""

from __future__ import annotations

from .base import Task

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (a name may be registered once)."""
    if not task.name or task.name in _TASKS:
        raise ValueError(f"task name {task.name!r} is empty or already registered")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``.

    Raises:
        ValueError: unknown name, listing the tasks.
    """
    _load_builtin()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return _TASKS[name]


def available_tasks() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def _load_builtin() -> None:
    # Importing a task module registers it; imported lazily so that `sst --help` stays fast.
    from . import graph, images, lm, mt  # noqa: F401
