"""FSDP2 (fully_shard) on 2 spawned CPU/gloo ranks against one process without FSDP.

One launch runs every scenario (a spawn costs ~3 s): each method trains a tiny model a few
steps sharded, rank 0 repeats it in one process on the whole batch, and the merged dense
weights and losses must agree to float tolerance (SST with swaps every 2 steps and re-SVDs
every 4, staggered). A DCP save at mid-run and a resume in a fresh model/optimizer must give
bitwise the state of the uninterrupted sharded run.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sparse_spectral.methods import make_method

WORLD = 2
TOL = 1e-5  # float32 (measured <= 2e-6): reduction orders; Cholesky-QR re-SVD vs LAPACK

# Square layers have near-zero singular values, whose vectors any SVD may choose freely
# (then two correct runs part ways): the MLP is rectangular, LLaMA's square q/o stay dense,
# and the learning rates keep every s clear of the clamp at 0 (checked below).
SST = {"rank": 4, "iteration_interval": 2, "iterations_per_round": 2}
SCENARIOS = {  # name: (model, method, settings, steps)
    "full-mlp": ("mlp", "full", {}, 6),
    "lora-mlp": ("mlp", "lora", {"rank": 4}, 6),
    "relora-mlp": ("mlp", "relora", {"rank": 4, "merge_interval": 3}, 7),
    "sst-mlp": ("mlp", "sst", SST, 9),
    "sst-sampled-s-mlp": ("mlp", "sst", {**SST, "update_all_singular_values": False}, 9),
    "sst-llama": ("llama", "sst", {**SST, "exclude_modules": ["q_proj", "o_proj"]}, 8),
}
LR = {"mlp": 5e-3, "llama": 5e-4}


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(16, 48), nn.Tanh(), nn.Linear(48, 24), nn.Tanh(),
                             nn.Linear(24, 16))
    from sparse_spectral.models.presets import build_lm

    return build_lm("llama_micro", 64, 16)


def _loss(kind: str, model: nn.Module, step: int, part: slice) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + step)
    if kind == "mlp":
        x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
        return nn.functional.mse_loss(model(x[part]), y[part])
    ids = torch.randint(0, 64, (4, 16), generator=gen)[part]
    return model(input_ids=ids, labels=ids).loss


def _train(kind, name, settings, steps, sharded, start_dir=None, save_dir=None, save_at=None):
    """Train; return per-step global losses, the method and the full (gathered) state dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from sparse_spectral.training.fsdp import load_checkpoint, save_checkpoint, shard_model

    model = _model(kind)
    method = make_method(name, **settings)
    model = method.prepare(model)
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    if sharded:
        shard_model(model, method)
        from sparse_spectral.spectral.layer import SpectralLinear

        # Sharded layers never keep a composed W (FSDP2 re-gathers into reused buffers).
        assert not any(m.reuse_composed_weight for m in model.modules()
                       if isinstance(m, SpectralLinear))
    optimizer = method.build_optimizer(model, lr=LR[kind])
    first = 0
    if start_dir is not None:
        load_checkpoint(start_dir, model, optimizer, method)
        first = method.step
    batch = 8 if kind == "mlp" else 4
    part = slice(rank * batch // world, (rank + 1) * batch // world)
    losses = []
    for step in range(first, steps):
        loss = _loss(kind, model, step, part)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_step(step + 1, optimizer)
        value = loss.detach().clone()
        if sharded:
            dist.all_reduce(value)
        losses.append(value.item() / world)
        if save_at == step + 1:
            save_checkpoint(save_dir, model, optimizer, method)
    state = (get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
             if sharded else model.state_dict())
    return losses, method, {k: v.detach().clone() for k, v in state.items()}


def _merged(kind, name, settings, state) -> dict[str, torch.Tensor]:
    """Dense weights of a one-process model holding ``state`` (invariant to SVD signs)."""
    model = _model(kind)
    method = make_method(name, **settings)
    model = method.prepare(model)
    model.load_state_dict(state)
    return {k: v.detach() for k, v in method.merge(model).state_dict().items()}


def _scenarios(rank: int, tmp: str) -> dict:
    out = {}
    for label, (kind, name, settings, steps) in SCENARIOS.items():
        losses, method, state = _train(kind, name, settings, steps, sharded=True)
        row = {"losses": losses, "merged": _merged(kind, name, settings, state),
               "idx": {k: v for k, v in state.items() if k.endswith("idx")}}
        if rank == 0:
            ref_losses, _, ref_state = _train(kind, name, settings, steps, sharded=False)
            row["ref_losses"] = ref_losses
            row["ref_merged"] = _merged(kind, name, settings, ref_state)
            row["ref_idx"] = {k: v for k, v in ref_state.items() if k.endswith("idx")}
            row["ref_min_s"] = min([v.min().item() for k, v in ref_state.items()
                                    if k.endswith(".s")], default=None)
        out[label] = row
    # DCP: save at step 3 of an SST run with a swap and re-SVDs on either side, resume.
    kind, name, settings, steps = SCENARIOS["sst-llama"]
    ckpt = os.path.join(tmp, "ckpt_step3")
    _, _, straight = _train(kind, name, settings, steps, True, save_dir=ckpt, save_at=3)
    resumed_losses, method, resumed = _train(kind, name, settings, steps, True, start_dir=ckpt)
    out["resume"] = {"equal": all(torch.equal(straight[k], resumed[k]) for k in straight),
                     "keys": sorted(straight) == sorted(resumed), "steps": len(resumed_losses),
                     "method_step": method.step, "files": sorted(os.listdir(ckpt))}
    # GaLore is refused with a clear message.
    try:
        from sparse_spectral.training.fsdp import shard_model

        galore = make_method("galore", rank=4)
        shard_model(galore.prepare(_model("mlp")), galore)
        out["galore"] = "not refused"
    except ValueError as error:
        out["galore"] = str(error)
    out["bad"] = []
    from sparse_spectral.training.fsdp import load_checkpoint, shard_model

    odd = make_method("sst", rank=2)
    odd_model = odd.prepare(nn.Sequential(nn.Linear(15, 8)))  # Vh (k, 15) cannot split in 2
    for call in (lambda: shard_model(odd_model, odd),
                 lambda: load_checkpoint(tmp, odd_model, None, odd)):  # not a checkpoint
        try:
            call()
            out["bad"].append("accepted")
        except ValueError as error:
            out["bad"].append(str(error))
    return out


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        torch.save(_scenarios(rank, tmp), os.path.join(tmp, f"result{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, timeout: float = 240.0) -> list[dict]:
    context = mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"FSDP2 workers did not finish within {timeout} s")
    return [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize("label", sorted(SCENARIOS))
def test_sharded_matches_one_process(results, label):
    zero, one = results[0][label], results[1][label]
    assert zero["losses"] == one["losses"]  # the all-reduced loss is the same on both ranks
    torch.testing.assert_close(torch.tensor(zero["losses"]), torch.tensor(zero["ref_losses"]),
                               rtol=TOL, atol=TOL)
    assert zero["merged"].keys() == zero["ref_merged"].keys()
    for key, ref in zero["ref_merged"].items():
        torch.testing.assert_close(zero["merged"][key], ref, rtol=TOL, atol=TOL, msg=key)
        assert torch.equal(zero["merged"][key], one["merged"][key]), key  # gathered alike
    assert zero["ref_min_s"] is None or zero["ref_min_s"] > 0  # a well-posed comparison
    for key, ref in zero["ref_idx"].items():  # the same selections as one process
        assert torch.equal(zero["idx"][key], ref), key


def test_dcp_resume_is_exact(results):
    for rank_result in results:
        resume = rank_result["resume"]
        assert resume["keys"] and resume["equal"]
        assert resume["steps"] == SCENARIOS["sst-llama"][3] - 3
        assert resume["method_step"] == SCENARIOS["sst-llama"][3]
        assert {".metadata", "method.json", "__0_0.distcp", "__1_0.distcp"} <= set(
            resume["files"])


def test_galore_is_refused(results):
    assert "galore" in results[0]["galore"] and "FSDP2" in results[0]["galore"]


def test_bad_input_is_refused(results):
    odd_width, not_checkpoint = results[0]["bad"]
    assert "in_features=15" in odd_width and "world size 2" in odd_width
    assert "not a finished FSDP2 checkpoint" in not_checkpoint


def test_needs_a_process_group():
    from sparse_spectral.training.fsdp import shard_model

    with pytest.raises(RuntimeError, match="process group"):
        shard_model(nn.Linear(4, 4))
