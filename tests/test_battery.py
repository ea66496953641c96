"""One case table, every method and variant, the same checks (peft style).

Each case runs on an in-file MLP and on a tiny transformers LLaMA: prepare keeps the initial
outputs (where the method promises it), training reduces the loss, trainable counts equal the
formula of SPEC section 4, merge parity, save/load round trip, exact resume and bad input.
"""

from __future__ import annotations

import io

import pytest
import torch
from conftest import TinyMLP, tiny_llama, token_batch
from torch import nn

from sparse_spectral import load_pretrained, make_method, method_from_state, save_pretrained
from sparse_spectral.linear import linear_shape
from sparse_spectral.methods import SST_VARIANTS, LoRALinear
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.targeting import find_target_modules

RANK = 2
CASES = {
    "full": {},
    "lora": {"rank": RANK},
    "relora": {"rank": RANK, "merge_interval": 2},
    # scale 1: at rank 2 GaLore's default 0.25 moves too little in 16 steps to show progress
    "galore": {"rank": RANK, "update_proj_gap": 2, "scale": 1.0},
    "apollo": {"rank": RANK, "update_proj_gap": 2},
    "apollo_mini": {"update_proj_gap": 2},  # rank 1 and tensor-wise scaling: the variant's
    "sst": {"rank": RANK, "iteration_interval": 2},
    **{name: {"rank": RANK, "iteration_interval": 2} for name in SST_VARIANTS},
}
KEEPS_INITIAL_OUTPUTS = set(CASES) - {"sst-random-init"}
MODELS = ("mlp", "llama")


def _build(arch: str, seed: int = 0) -> nn.Module:
    if arch == "mlp":
        torch.manual_seed(seed)
        return TinyMLP()
    torch.manual_seed(seed)
    return tiny_llama()


def _settings(name: str, arch: str) -> dict:
    extra = {"exclude_modules": ["head"]} if arch == "mlp" else {}
    return {**CASES[name], **extra}


def _loss(model: nn.Module, arch: str, seed: int = 0) -> torch.Tensor:
    if arch == "mlp":
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)
        return nn.functional.cross_entropy(model(x), y)
    ids = token_batch(seed)
    return model(ids, labels=ids).loss


def _output(model: nn.Module, arch: str) -> torch.Tensor:
    if arch == "mlp":
        return model(torch.randn(4, 12, generator=torch.Generator().manual_seed(99)))
    return model(token_batch(99)).logits


def _train(model, method, opt, arch, first, last, fixed_batch=False):
    for step in range(first, last + 1):
        _loss(model, arch, 0 if fixed_batch else step).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step, opt)


def _prepared(name, arch, seed=0):
    method = make_method(name, **_settings(name, arch))
    model = method.prepare(_build(arch, seed))
    return model, method, method.build_optimizer(model, lr=1e-2)


params = pytest.mark.parametrize("arch", MODELS)
methods = pytest.mark.parametrize("name", sorted(CASES))


@params
@methods
def test_prepare_keeps_initial_outputs(name, arch):
    dense = _build(arch)
    reference = _output(dense, arch)
    model = make_method(name, **_settings(name, arch)).prepare(dense)
    if name in KEEPS_INITIAL_OUTPUTS:
        torch.testing.assert_close(_output(model, arch), reference, rtol=0, atol=1e-5)
    else:  # random factors keep only the spectrum, so the function changes
        assert not torch.allclose(_output(model, arch), reference, atol=1e-3)


@params
@methods
def test_training_reduces_loss_on_a_fixed_batch(name, arch):
    model, method, opt = _prepared(name, arch)
    before = _loss(model, arch).item()
    _train(model, method, opt, arch, 1, 16, fixed_batch=True)
    assert _loss(model, arch).item() < 0.95 * before


def _expected_trainable(name: str, arch: str) -> int:
    """SPEC section 4: LoRA r (m + n), SST r (m + n) + k per target; the rest trains densely."""
    dense = _build(arch)
    targets = find_target_modules(dense, **{k: v for k, v in _settings(name, arch).items()
                                            if k in ("target_modules", "exclude_modules")})
    target_params = {id(p) for _, module in targets for p in module.parameters()}
    outside = sum(p.numel() for p in dense.parameters() if id(p) not in target_params)
    per_target = 0
    for _, module in targets:
        m, n = linear_shape(module)
        bias = 0 if module.bias is None else module.bias.numel()
        if name in ("full", "galore", "apollo", "apollo_mini"):
            per_target += m * n + bias
        elif name in ("lora", "relora"):
            per_target += RANK * (m + n)  # the target's bias stays frozen with W
        else:
            per_target += RANK * (m + n) + min(m, n) + bias
    return outside + per_target


@params
@methods
def test_trainable_count_matches_formula(name, arch):
    model, _, _ = _prepared(name, arch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == _expected_trainable(name, arch)


@params
@methods
def test_merge_parity(name, arch):
    model, method, opt = _prepared(name, arch)
    _train(model, method, opt, arch, 1, 3)
    model.eval()
    merged = method.merge(model)
    assert not any(isinstance(m, (SpectralLinear, LoRALinear)) for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(_output(merged, arch), _output(model, arch), rtol=0, atol=1e-5)


@params
@methods
def test_save_load_round_trip(name, arch, tmp_path):
    model, method, opt = _prepared(name, arch)
    _train(model, method, opt, arch, 1, 3)
    save_pretrained(model, method, tmp_path)
    loaded, loaded_method = load_pretrained(_build(arch, seed=1), tmp_path)
    assert loaded_method.config == method.config and loaded_method.step == 3
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
    model.eval(), loaded.eval()
    assert torch.equal(_output(loaded, arch), _output(model, arch))


@params
@methods
def test_exact_resume(name, arch):
    """k steps, checkpoint, rebuild everything, j steps == k + j straight steps."""
    k, j = 3, 4
    model, method, opt = _prepared(name, arch)
    _train(model, method, opt, arch, 1, k)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    method_state = method.state_dict()
    _train(model, method, opt, arch, k + 1, k + j)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_method = method_from_state(method_state)
    resumed = resumed_method.prepare(_build(arch, seed=2))
    resumed.load_state_dict(saved["model"])
    resumed_method.load_state_dict(method_state)
    resumed_opt = resumed_method.build_optimizer(resumed, lr=1e-2)
    resumed_opt.load_state_dict(saved["optimizer"])
    _train(resumed, resumed_method, resumed_opt, arch, k + 1, k + j)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", sorted(set(CASES) - {"full", "apollo_mini"}))  # Mini: rank 1
def test_bad_rank(name):
    with pytest.raises(ValueError, match=r"rank=0 must be an int >= 1"):
        make_method(name, **{**CASES[name], "rank": 0})
    method = make_method(name, **{**CASES[name], "rank": 9})
    with pytest.raises(ValueError, match=r"rank=9 is out of range for layer 'proj'"):
        method.prepare(_build("mlp"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_target_matched(name):
    method = make_method(name, **{**CASES[name], "target_modules": ["missing"]})
    with pytest.raises(ValueError, match="missing"):
        method.prepare(_build("mlp"))
