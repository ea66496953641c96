"""The registry of tasks: ``sst train|compare|ablate TASK`` are generic over it.

The built-in tasks are registered by ``sparse_spectral.tasks`` (importing this module
imports that package first); another task registers itself with :func:`register_task`.
"""

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
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return _TASKS[name]


def available_tasks() -> list[str]:
    return sorted(_TASKS)
