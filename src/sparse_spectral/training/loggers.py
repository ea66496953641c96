"""Metric loggers behind one tiny protocol: ``log_dict(metrics, step)`` and ``close()``.

``JsonlLogger`` writes one JSON object per line (the file the reports read);
``TensorBoardLogger`` is optional (needs the ``tensorboard`` package); ``MultiLogger`` fans
out to several.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

from .._util.atomic import atomic_write_text
from .runfolder import RunFolderError, writing


class MetricLogger(Protocol):
    def log_dict(self, metrics: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN/inf; keep the information as text
    return value


class JsonlLogger:
    """Append ``{"step": step, **metrics}`` lines to ``path``, flushed per line.

    Args:
        path: the JSONL file.
        resume_step: when resuming, lines of steps after this one (written by the interrupted
            run after its last checkpoint) are dropped first, so the file tells one story.
            The trimmed file replaces the old one atomically; a torn last line (a kill
            mid-write) is dropped with a warning, any other unreadable line is an error
            naming the file and line.

    Raises:
        RunFolderError: the file cannot be written (disk full, no permission), here or in
            :meth:`log_dict`; or a line other than the last is not JSON.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(path)
        with writing(self.path, "the metrics log"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is None:
                self.path.write_text("")
            elif self.path.exists():
                kept = [line for line, record in _read_log(self.path)
                        if record.get("step", 0) <= resume_step]
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))
            self._file = open(self.path, "a")

    def log_dict(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with writing(self.path, "the metrics log"):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        with writing(self.path, "the metrics log"):
            self._file.close()


def _read_log(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` for every line of a metrics log (see :class:`JsonlLogger`)."""
    with writing(path, "(reading) the metrics log"):
        text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as err:
            if number == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{path}: dropped its torn last line {number} (a write was "
                              f"interrupted): {line[:60]!r}", stacklevel=3)
                continue
            raise RunFolderError(f"{path} line {number} is not a JSON object ({err}): "
                                 f"{line[:80]!r}") from None
        out.append((line, record))
    return out


class TensorBoardLogger:
    """Scalars to TensorBoard (``pip install tensorboard``)."""

    def __init__(self, log_dir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("--tensorboard needs the tensorboard package: "
                              "pip install tensorboard") from err
        self._writer = SummaryWriter(str(log_dir))

    def log_dict(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._writer.close()


class NullLogger:
    """Drops every record (a DDP rank other than 0)."""

    def log_dict(self, metrics: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


class MultiLogger:
    """Send every record to each of ``loggers``."""

    def __init__(self, *loggers: MetricLogger):
        self.loggers = loggers

    def log_dict(self, metrics: dict[str, Any], step: int) -> None:
        for logger in self.loggers:
            logger.log_dict(metrics, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def metric_trace(run_dir: str | os.PathLike, key: str) -> list[dict[str, float]]:
    """``[{"step", key}, ...]`` for every line of ``<run_dir>/metrics.jsonl`` that has ``key``.

    Non-finite values are logged as text (``"nan"``, ``"inf"``); ``float()`` reads both.
    """
    trace = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if key in record:
            trace.append({"step": record["step"], key: float(record[key])})
    return trace
