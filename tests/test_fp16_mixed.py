"""``fp16-mixed``: float16 autocast with a gradient scaler, through the one loop.

A step with an inf gradient is skipped (parameters and optimizer counters unchanged, scale
halved) while the schedule and ``after_step`` advance; the scaler's state survives resume
bit-exactly; a tiny task trains to fp32's figures. Gradient numerics under float16
autocast against float64: tests/test_precision.py.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import TinyMLP
from torch import nn

from sparse_spectral.cli import main
from sparse_spectral.methods import make_method
from sparse_spectral.training.checkpoint import latest_checkpoint
from sparse_spectral.training.device import autocast, check_precision, grad_scaler
from sparse_spectral.training.loop import LoopSettings, train

CPU = torch.device("cpu")


class ListLogger:
    def __init__(self):
        self.records: dict[int, dict] = {}

    def log_dict(self, metrics, step):
        self.records.setdefault(step, {}).update(metrics)

    def close(self):
        pass


def test_fp16_mixed_autocasts_to_float16_with_a_cpu_scaler():
    check_precision("fp16-mixed", CPU)  # CPU autocast runs float16 (torch >= 2.x)
    x, w = torch.randn(3, 4), torch.randn(4, 2)
    with autocast("fp16-mixed", CPU):
        assert (x @ w).dtype == torch.float16
    scaler = grad_scaler("fp16-mixed", CPU)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() == 2.0**16
    assert all(grad_scaler(p, CPU) is None for p in ("fp32", "bf16-mixed", "bf16"))


class InjectedInf:
    """A loss whose gradient becomes inf (on the head's weight) at the given steps."""

    def __init__(self, model, steps):
        self.steps, self.calls = set(steps), 0
        model.head.weight.register_hook(
            lambda g: torch.full_like(g, math.inf) if self.calls in self.steps else g)

    def __call__(self, model, x, y):
        self.calls += 1
        return nn.functional.cross_entropy(model(x), y)


class Snapshots:
    """An eval_fn (every step) that keeps a copy of the model's tensors after each step."""

    def __init__(self):
        self.states: list[dict[str, torch.Tensor]] = []

    def __call__(self, model):
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"val_loss": 0.0}


def _run(tmp_path, method, steps=5, inject=(), resume=False, save_every=0):
    torch.manual_seed(0)
    model = method.prepare(TinyMLP())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 12, generator=g), torch.randint(0, 5, (32,), generator=g)
    loss_fn, snapshots, logger = InjectedInf(model, inject), Snapshots(), ListLogger()
    settings = LoopSettings(num_training_steps=steps, lr=1e-2, warmup_steps=0, eval_every=1,
                            log_every=1, save_every=save_every)
    built = []  # the loop's optimizer, to read its counters

    def build_optimizer(model, method, **kwargs):
        built.append(method.build_optimizer(model, **kwargs))
        return built[-1]

    result = train(model, method, batch_fn=lambda step, micro: (x, y), loss_fn=loss_fn,
                   eval_fn=snapshots, settings=settings, run_dir=tmp_path, logger=logger,
                   progress=False, precision="fp16-mixed", device=CPU, resume=resume,
                   build_optimizer=build_optimizer)
    method.optimizer_for_test = built[0]
    return model, result, snapshots.states, logger.records


def test_an_inf_gradient_skips_the_update_halves_the_scale_and_the_schedule_advances(tmp_path):
    method = make_method("sst", rank=2, iteration_interval=50, exclude_modules=["head"])
    calls = []
    original = method.after_step
    method.after_step = lambda step, opt: (calls.append(step), original(step, opt))[1]
    model, result, states, logs = _run(tmp_path, method, steps=5, inject={3})
    assert result.skipped_steps == 1 and calls == [1, 2, 3, 4, 5] and method.step == 5
    assert logs[3]["loss_scale"] == logs[2]["loss_scale"] / 2 and logs[3]["skipped_steps"] == 1
    assert logs[4]["loss_scale"] == logs[3]["loss_scale"] and not math.isfinite(
        logs[3]["grad_norm"])
    # Step 3 changed no parameter: the optimizer did not run; after_step's clamp and
    # renormalisation on unit vectors moves them by rounding at most.
    before, after = states[1], states[2]
    for key in before:
        if key.endswith(("U_active", "Vh_active")):
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-7)
        else:
            assert torch.equal(after[key], before[key]), key
    assert not torch.equal(states[3]["head.weight"], after["head.weight"])  # step 4 trains
    # Adam's per-slot counters count the four real updates, not the five steps.
    state = method.optimizer_for_test.state
    assert {int(v["step"].max()) for v in state.values()} == {4}


def test_the_scaler_state_is_checkpointed_and_resume_is_bit_exact(tmp_path):
    settings = {"rank": 2, "iteration_interval": 2, "exclude_modules": ["head"]}
    straight, _, _, logs = _run(tmp_path / "a", make_method("sst", **settings), steps=6,
                                inject={2})
    run_dir = tmp_path / "b"
    _run(run_dir, make_method("sst", **settings), steps=6, inject={2}, save_every=3)
    # Pretend the run died after its step-3 checkpoint, then resume it.
    root = run_dir / "checkpoints"
    shutil.rmtree(root / "step_000006")
    (root / "latest").write_text("step_000003\n")
    state = torch.load(latest_checkpoint(run_dir) / "state.pt", weights_only=True)
    assert state["extra"]["scaler"]["scale"] == 2.0**15  # halved once, at step 2
    resumed, _, _, resumed_logs = _run(run_dir, make_method("sst", **settings), steps=6,
                                       resume=True)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    assert resumed_logs[6]["loss_scale"] == logs[6]["loss_scale"] == 2.0**15


DIGITS = ["train", "images", "--dataset", "digits", "--hidden", "16"]


@pytest.mark.parametrize("method", ["full", "sst"])
def test_a_tiny_task_trains_in_fp16_mixed_like_fp32(method, tmp_path):
    extra = ["--rank", "4"] if method != "full" else []
    accuracy = {}
    for precision in ("fp32", "fp16-mixed"):
        out = tmp_path / precision
        assert main([*DIGITS, "--epochs", "3", "--batch_size", "64", "--no_progress",
                     "--method", method, *extra, "--precision", precision, "--lr", "1e-2",
                     "--output_dir", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        accuracy[precision] = summary["test_accuracy"]
    assert summary["settings"]["runtime"]["precision"] == "fp16-mixed"
    assert summary["skipped_steps"] < 5  # the scale calibrates within a few steps, if at all
    # float16 keeps 11 significand bits: the same training lands within a few points of fp32
    assert accuracy["fp16-mixed"] > 0.5
    assert abs(accuracy["fp16-mixed"] - accuracy["fp32"]) < 0.05


def test_graph_refuses_fp16_mixed(tmp_path, capsys):
    assert main(["train", "graph", "--dataset", "disease", "--task", "lp", "--data-dir",
                 str(tmp_path), "--precision", "fp16-mixed",
                 "--output_dir", str(tmp_path / "g")]) == 2
    assert "precision='fp16-mixed' is not supported by the graph task" in capsys.readouterr().err
