"""The `sst` command: version, info, and the digits demo doing real training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sparse_spectral import __version__
from sparse_spectral.cli import main


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sparse-spectral {__version__}"


def test_info_reports_torch_threads_and_device(capsys):
    import torch

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch           {torch.__version__}" in out
    assert f"threads         {torch.get_num_threads()}" in out
    assert "device          cpu" in out or "cuda available  True" in out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "sst"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"sparse-spectral {__version__}"


def test_demo_trains_both_methods(capsys):
    assert main(["demo", "--epochs", "3", "--width", "32", "--rank", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| full", "| sst"))]
    assert len(rows) == 2
    for row in rows:
        accuracy = float(row.split("|")[5])
        assert accuracy > 0.5  # 10 classes: chance is 0.1; 3 epochs already learn a lot


def test_demo_rejects_bad_rank(capsys):
    assert main(["demo", "--epochs", "1", "--rank", "0", "--methods", "sst"]) == 2
    assert "rank=0" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["lm", "mt", "graph", "images"])
@pytest.mark.parametrize("command", ["train", "compare", "ablate"])
def test_parsing_flags_has_no_side_effect_on_threads(task, command):
    import torch

    from sparse_spectral.cli import build_parser
    from sparse_spectral.cli.flags import settings_from_args
    from sparse_spectral.tasks.registry import get_task

    before = torch.get_num_threads()
    args = build_parser().parse_args([command, task, "--threads", "3"])
    assert args.task_name == task
    settings_from_args(args, get_task(task).settings_class)
    assert torch.get_num_threads() == before and args.threads == 3


@pytest.mark.parametrize("command", ["train", "compare"])
def test_the_command_applies_the_thread_count(command, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main([command, "images", "--dataset", "digits", "--hidden", "8", "--rank", "2",
                     "--epochs", "0.1", "--batch_size", "64", "--threads", "2",
                     "--no_progress", "--output_dir", str(tmp_path / "run")]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
