"""Shortcuts for the tests: one run or a comparison of a task through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparse_spectral.training.compare import run_compare
from sparse_spectral.training.runner import train_run


def train_summary(task, settings, **kw) -> dict:
    """``train_run(task, settings, **kw).summary``."""
    return train_run(task, settings, **kw).summary


def compare_and_render(task, settings, methods, method_lr=None, seeds=None, progress=False):
    """``run_compare`` then ``report.render`` of its folder, as ``sst compare`` does."""
    from sparse_spectral.report import render

    results = run_compare(task, settings, methods, seeds=seeds, method_lr=method_lr,
                          progress=progress)
    render(settings.output.output_dir)
    return results


SHAKESPEARE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare"
               / "input.txt")


def shakespeare_excerpt(tmp_path_factory, chars: int) -> Path:
    """The first ``chars`` characters of TinyShakespeare as a user text file (else a skip)."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not available")
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(SHAKESPEARE.read_text()[:chars])
    return path
