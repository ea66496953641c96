"""--device and --precision: resolution, errors before any output, bf16 runs on the CPU."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sparse_spectral.cli import main
from sparse_spectral.training.checkpoint import latest_checkpoint
from sparse_spectral.training.device import (
    autocast,
    check_precision,
    move_to,
    resolve_device,
)

DIGITS = ["train", "images", "--dataset", "digits", "--hidden", "16", "--rank", "4",
          "--epochs", "1", "--batch_size", "64", "--warmup_steps", "2", "--no_progress"]


def test_auto_and_cpu_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("spec, message", [
    ("tpu", r"device='tpu' is unknown; allowed: auto, cpu, cuda, cuda:N"),
    ("cuda:x", r"device='cuda:x' is unknown"),
    ("cuda:99", r"CUDA is not available|only \d+ CUDA device"),
])
def test_bad_devices_name_the_value(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU machine")
def test_cuda_requested_without_cuda_is_refused_before_any_output(tmp_path, capsys):
    code = main([*DIGITS, "--device", "cuda", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "device='cuda': CUDA is not available on this machine; allowed here: auto, cpu" in err
    assert not (tmp_path / "run").exists()


def test_unknown_precision_is_refused_before_any_output(tmp_path, capsys):
    code = main([*DIGITS, "--precision", "fp16", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "precision='fp16' is unknown; allowed: fp32, bf16-mixed, bf16" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="allowed: fp32, bf16-mixed, bf16"):
        check_precision("tf32", torch.device("cpu"))


def test_move_to_walks_containers_and_dataclasses_and_copies_nothing_on_the_cpu():
    @dataclasses.dataclass
    class Data:
        x: torch.Tensor
        splits: dict
        name: str

    data = Data(torch.ones(2), {"a": (torch.zeros(1), [torch.ones(3)])}, "d")
    assert move_to(data, torch.device("cpu")) is data
    moved = move_to(data, torch.device("meta"))
    assert moved.x.device.type == "meta" and moved.name == "d"
    assert moved.splits["a"][1][0].device.type == "meta" and data.x.device.type == "cpu"


def test_autocast_is_a_no_op_unless_bf16_mixed():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with autocast("fp32", torch.device("cpu")):
        assert (x @ w).dtype == torch.float32
    with autocast("bf16-mixed", torch.device("cpu")):
        assert (x @ w).dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_low_precision_runs_train_like_fp32_and_are_recorded(method, precision, tmp_path):
    from safetensors.torch import load_file

    extra = ["--rank", "4"] if method != "full" else []
    accuracy = {}
    for name in ("fp32", precision):
        out = tmp_path / name
        assert main([*DIGITS[:6], "--epochs", "3", "--batch_size", "64", "--no_progress",
                     "--method", method, *extra, "--precision", name, "--lr", "1e-2",
                     "--output_dir", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        accuracy[name] = summary["test_accuracy"]
    assert summary["settings"]["runtime"]["precision"] == precision
    assert summary["device"] == "cpu"
    # bf16 keeps 8 bits of mantissa: the same training lands within a few points of fp32
    assert accuracy[precision] > 0.5 and abs(accuracy[precision] - accuracy["fp32"]) < 0.1
    state = torch.load(latest_checkpoint(out) / "state.pt", weights_only=True)
    assert state["settings"]["runtime"]["precision"] == precision
    weights = load_file(latest_checkpoint(out) / "model.safetensors")
    dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
    assert dtypes == ({torch.bfloat16} if precision == "bf16" else {torch.float32})


def test_graph_trains_in_bf16_mixed_and_refuses_pure_bf16(reference_data, tmp_path, capsys):
    """The sparse feature and adjacency products stay fp32 under autocast (torch has no bf16
    CSR product on the CPU); the dense maps run in bf16 and the run learns as in fp32."""
    scores = {}
    for precision in ("fp32", "bf16-mixed"):
        out = tmp_path / precision
        assert main(["train", "graph", "--dataset", "disease", "--task", "lp", "--epochs", "40",
                     "--min_epochs", "0", "--data-dir", str(reference_data), "--no_progress",
                     "--precision", precision, "--output_dir", str(out)]) == 0
        scores[precision] = json.loads((out / "summary.json").read_text())["best_val_score"]
    assert scores["bf16-mixed"] > 0.6 and abs(scores["bf16-mixed"] - scores["fp32"]) < 0.05
    capsys.readouterr()
    assert main(["train", "graph", "--dataset", "disease", "--task", "lp", "--data-dir",
                 str(reference_data), "--precision", "bf16",
                 "--output_dir", str(tmp_path / "bf16")]) == 2
    assert "precision='bf16' is not supported by the graph task" in capsys.readouterr().err
    assert not (tmp_path / "bf16").exists()
