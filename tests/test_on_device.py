"""Training on the run's device: every test runs on the CPU and, marked ``cuda``, on a GPU.

The CPU variants check the tests themselves here; ``benchmarks/gpu_check.sh`` runs the CUDA
ones (``pytest -m cuda``) when a GPU is there. No reference data is needed (digits and a
generated text), so they run on a bare GPU machine.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sparse_spectral.cli import main
from sparse_spectral.methods import make_method
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.training.checkpoint import latest_checkpoint

DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]
METHODS = ["full", "lora", "relora", "galore", "apollo", "apollo_mini", "sst"]
DIGITS = ["train", "images", "--dataset", "digits", "--hidden", "16", "--batch_size", "64",
          "--warmup_steps", "2", "--lr", "1e-2", "--no_progress"]


def _tensors_on(model: nn.Module, device: str) -> set[str]:
    """Device types of every parameter and buffer."""
    return {t.device.type for t in [*model.parameters(), *model.buffers()]} - {device}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_the_device_in_bf16_mixed(device, method, tmp_path):
    out = tmp_path / "run"
    rank = [] if method in ("full", "apollo_mini") else ["--rank", "4"]  # Mini: rank 1
    assert main([*DIGITS, "--epochs", "3", "--method", method, *rank, "--device", device,
                 "--precision", "bf16-mixed", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith(device)
    assert summary["settings"]["runtime"] == {**summary["settings"]["runtime"],
                                              "device": device, "precision": "bf16-mixed"}
    assert summary["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    weights = load_file(latest_checkpoint(out) / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}


@pytest.mark.parametrize("device", DEVICES)
def test_sst_state_changes_run_on_the_device_and_match_the_cpu(device):
    """Swap, renormalise, re-SVD and moment restarts stay on the device, and a few steps of
    SST there land where the same steps on the CPU do (same selections, close factors)."""
    runs = {}
    for where in ("cpu", device):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(24, 32), nn.Tanh(), nn.Linear(32, 12))
        method = make_method("sst", rank=4, iteration_interval=2, target_modules=["0", "2"])
        model = method.prepare(model).to(where)
        optimizer = method.build_optimizer(model, lr=1e-2)
        g = torch.Generator().manual_seed(1)
        for step in range(1, 25):  # T2 = ceil(k / r) = 3 or 6 iterations of 2 steps: re-SVDs
            x = torch.randn(16, 24, generator=g).to(where)
            loss = model(x).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step(step, optimizer)
        assert not _tensors_on(model, where)
        assert {v.device.type for state in optimizer.state.values() for v in state.values()
                if torch.is_tensor(v) and v.dim() > 0} <= {where}
        runs[where] = model
    for a, b in zip(runs["cpu"].modules(), runs[device].modules()):
        if isinstance(a, SpectralLinear):
            assert torch.equal(a.idx, b.idx.cpu()) and torch.equal(a.frozen_idx,
                                                                   b.frozen_idx.cpu())
            torch.testing.assert_close(b.dense_weight().cpu(), a.dense_weight(), rtol=0,
                                       atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_resume_on_the_device_continues_the_interrupted_run(device, tmp_path):
    """Checkpoints written on the device load back there; on the CPU resume is bit-exact,
    on CUDA (non-deterministic reductions) it matches to float tolerance."""
    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {i}: to be or not to be, that is the question.\n"
                            for i in range(400)))
    common = ["train", "lm", "--text", str(text), "--model", "gpt_micro", "--method", "sst",
              "--rank", "4", "--block_size", "16", "--batch_size", "4", "--warmup_steps", "2",
              "--eval_every", "4", "--eval_tokens", "256", "--iteration_interval", "2",
              "--num_training_steps", "8", "--device", device, "--precision", "bf16-mixed",
              "--no_progress"]
    assert main([*common, "--output_dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--save_every", "4", "--output_dir", str(tmp_path / "b")]) == 0
    root = tmp_path / "b" / "checkpoints"
    for f in (root / "step_000008").iterdir():
        f.unlink()
    (root / "step_000008").rmdir()
    (root / "latest").write_text("step_000004\n")
    assert main([*common, "--save_every", "4", "--output_dir", str(tmp_path / "b"),
                 "--resume"]) == 0
    a = load_file(tmp_path / "a" / "checkpoints" / "step_000008" / "model.safetensors")
    b = load_file(root / "step_000008" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        if device == "cpu":
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("device", DEVICES)
def test_materialize_on_the_device_matches_the_dense_build(device):
    """A meta-built LLaMA materialised on the device computes what the dense build converted
    on the CPU computes (the initial values are replayed; the SVD runs on the device)."""
    from sparse_spectral.models import build_lm, materialize

    dense = make_method("sst", rank=4).prepare(build_lm("llama_micro", 64, 32, seed=0))
    model = materialize(build_lm("llama_micro", 64, 32, seed=0, device="meta"),
                        make_method("sst", rank=4), device=device)
    assert not _tensors_on(model, device)
    layers = [(a, b) for a, b in zip(dense.modules(), model.modules())
              if isinstance(a, SpectralLinear)]
    assert len(layers) == 14
    for a, b in layers:  # factors may differ in sign between SVD backends: compare W
        torch.testing.assert_close(b.dense_weight().cpu(), a.dense_weight(), rtol=0, atol=1e-5)
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(input_ids=ids.to(device)).logits.cpu(),
                               dense(input_ids=ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_mixed_trains_sst_on_the_device_with_a_loss_scale(device, tmp_path):
    out = tmp_path / "run"
    assert main([*DIGITS, "--epochs", "3", "--method", "sst", "--rank", "4", "--device",
                 device, "--precision", "fp16-mixed", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith(device) and summary["test_accuracy"] > 0.5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("loss_scale", 0) > 1 for r in records)
