"""SpectralTrainer under ``torchrun`` and ``accelerate launch``, 2 processes (DDP, gloo, CPU).

Two launches of tests/hf_ddp_run.py (a tiny LLaMA with SST whose selections change every 2
steps and whose layers re-SVD every 4): a straight run with checkpoints under torchrun, then
a resume of its step-4 checkpoint under ``accelerate launch``, followed by the per-rank
checks (a run where rank 1's re-SVDs come out different, a stock Trainer stopped by the
guard, FSDP refused). The reference is one process with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import hf_ddp_run as job  # noqa: E402

from sparse_spectral.methods import make_method  # noqa: E402
from sparse_spectral.spectral import SpectralLinear  # noqa: E402
from sparse_spectral.training.hf import METHOD_STATE_NAME  # noqa: E402

SCRIPT = Path(__file__).parent / "hf_ddp_run.py"


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # --multi_gpu is accelerate's torchrun-like launcher; on the CPU (use_cpu=True) it runs
    # gloo ranks (--cpu alone would start one process).
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


def _launch(launcher: str, out: Path, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "HF_HOME": str(out.parent / "hf_home"),  # no accelerate config of the user's
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, *LAUNCHERS[launcher], str(SCRIPT), str(out), mode]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def _load(out: Path, name: str) -> list[dict]:
    return [torch.load(out / f"{name}_rank{r}.pt", weights_only=False) for r in (0, 1)]


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _merged(weights: dict) -> dict[str, torch.Tensor]:
    """Dense weights (invariant to the SVD's choice of vectors among near-equal values)."""
    method = make_method("sst", **job.SST)
    model = method.prepare(job.llama())
    model.load_state_dict(weights)
    return {k: v.detach().clone() for k, v in method.merge(model).state_dict().items()}


def test_two_processes_match_one_and_resume_exactly(tmp_path, monkeypatch):
    out, resumed = tmp_path / "ddp", tmp_path / "resumed"
    _launch("torchrun", out, "straight")
    straight = _load(out, "straight")

    # (a) The replicas are bitwise identical after 4 selection changes and 2 re-SVDs a layer,
    # with the methods' collectives on: world() said (rank, 2) in every after_step.
    _assert_identical(straight[0]["weights"], straight[1]["weights"])
    assert straight[0]["method"] == straight[1]["method"]
    for rank, got in enumerate(straight):
        assert got["global_step"] == job.STEPS
        assert got["after_step_world"] == [(rank, 2)] * job.STEPS
        assert got["optimizer_step_world"] == [(rank, 2)] * job.STEPS
    # Only the main process wrote the method state, at both checkpoints.
    assert straight[0]["saved"] == [4, 8] and straight[1]["saved"] == []
    for step in (4, 8):
        assert (out / f"checkpoint-{step}" / METHOD_STATE_NAME).is_file()

    # (b) One process with the same global batch of 4 rows (2 per rank above).
    resvds, threads = [], torch.get_num_threads()
    resvd = SpectralLinear.resvd_
    monkeypatch.setattr(SpectralLinear, "resvd_",
                        lambda layer, *a, **k: (resvds.append(1), resvd(layer, *a, **k)))
    torch.set_num_threads(1)  # as each rank
    try:
        single = job.run(tmp_path / "one", "straight", world_size=1)
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    assert len(resvds) == 2 * 14  # every one of the 14 layers re-decomposed twice
    assert single["after_step_world"] == [(0, 1)] * job.STEPS  # no collectives
    assert single["method"]["selections"] == straight[0]["method"]["selections"]
    initial = make_method("sst", **job.SST)
    initial.prepare(job.llama())
    assert single["method"]["selections"] != initial.state_dict()["selections"]  # they changed
    merged, want = _merged(straight[0]["weights"]), _merged(single["weights"])
    worst = max((merged[k] - want[k]).abs().max().item() for k in want)
    assert worst <= 1e-5, worst  # measured 2.1e-7

    # (c) Resume the step-4 checkpoint in a new launch (accelerate's this time): the
    # uninterrupted run's bits.
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoint-8")
    _launch("accelerate", resumed, "resume")
    again = _load(resumed, "resume")
    for rank in (0, 1):
        assert again[rank]["loaded"] == [4]  # every rank loaded the method state
        _assert_identical(again[rank]["weights"], straight[0]["weights"])
        assert again[rank]["method"] == straight[0]["method"]
        assert again[rank]["after_step_world"] == [(rank, 2)] * (job.STEPS - 4)
    assert again[0]["saved"] == [8] and again[1]["saved"] == []

    checks = _load(resumed, "checks")
    # Rank 1's re-SVDs made different bits; each rank ran only its own layers' (l mod 2),
    # half of one process's, and the owner's result reached both ranks.
    perturbed = [c["perturbed"] for c in checks]
    _assert_identical(perturbed[0]["weights"], perturbed[1]["weights"])
    assert [p["resvd_calls"] for p in perturbed] == [len(resvds) // 2] * 2
    assert any(not torch.equal(perturbed[0]["weights"][k], v)
               for k, v in straight[0]["weights"].items())
    for report in checks:
        # A stock Trainer over the DDP-wrapped SST model is stopped by the guard.
        message, step = report["guard"]
        assert "SlotAdamW" in message and "SpectralTrainer" in message and step == 0
        assert report["fsdp"].startswith("fsdp=True (or accelerate launch --use_fsdp): ")
        assert "--parallel fsdp2" in report["fsdp"]


@pytest.mark.parametrize("setting, value, named", [
    ("fsdp", True, "fsdp=True (or accelerate launch --use_fsdp)"),
    ("env", "true", "fsdp=None (or accelerate launch --use_fsdp)"),
    ("deepspeed", "ds.json", "deepspeed='ds.json' (or accelerate launch --use_deepspeed)"),
    ("parallelism_config", "pc", "parallelism_config='pc'"),
    ("tp_size", 2, "a tensor-parallel model (tp_size=2)"),
])
def test_every_sharding_setting_is_named(monkeypatch, setting, value, named):
    """What SpectralTrainer refuses (the 2-process test sees the whole error for fsdp)."""
    from sparse_spectral.training.hf import _sharding_settings

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    args = SimpleNamespace(fsdp=None, deepspeed=None, parallelism_config=None)
    trainer = SimpleNamespace(args=args, model=SimpleNamespace(tp_size=None))
    assert _sharding_settings(trainer) == []
    if setting == "env":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", value)
    elif setting == "tp_size":
        trainer.model.tp_size = value
    else:
        setattr(args, setting, value)
    assert _sharding_settings(trainer) == [named]
