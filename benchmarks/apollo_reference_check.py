"""Compare our ApolloAdamW with the published apollo-torch optimizer, numerically.

    pip download apollo-torch==1.0.3 --no-deps -d /tmp/apollo       # throwaway, not the venv
    unzip -q /tmp/apollo/apollo_torch-1.0.3-py3-none-any.whl -d /tmp/apollo_pkg
    APOLLO_TORCH_PATH=/tmp/apollo_pkg python benchmarks/apollo_reference_check.py

apollo-torch is never a dependency of this project; without it the script says so and exits
0. Its package ``__init__`` imports ``bitsandbytes`` (for the 8-bit variants), so the script
loads ``apollo_torch.apollo`` alone (it needs ``transformers``, which is installed).

The two draw their random projections differently by design (ours are counter-seeded by
``(seed, tensor, refresh)``, apollo-torch chains seeds from the parameter's index), so the
script replaces apollo-torch's ``stable_randn`` with our draw for the same refresh: both then
project with the same ``P`` and any difference is the rest of the arithmetic (moments,
scaling factors, norm-growth limiter, bias correction, scale, weight decay). It prints, per
weight shape (both projection sides), variant (APOLLO: channel-wise, rank 4, scale 1;
APOLLO-Mini: tensor-wise, rank 1, scale 128) and dtype, the largest difference between the
two optimizers' weights after ``STEPS`` steps across several projection refreshes, on
gradients whose norm grows 5% a step (so the limiter binds: the steps where it did are
counted), and whether each optimizer's state_dict loads with
``torch.load(weights_only=True)``.

Then (without apollo-torch too) it prints the planned optimizer-state bytes of LLaMA-130M and
LLaMA-1B shapes built on the meta device for full rank, GaLore and APOLLO at the GaLore
paper's ranks (256, 512), APOLLO at half that rank and APOLLO-Mini
(``planned_state_bytes(model, method=...)``, fp32, vocabulary 32000).
"""

from __future__ import annotations

import io
import os
import sys
import types

import torch

from sparse_spectral.methods.apollo_optim import ApolloAdamW, projection_key

STEPS, GAP, LR, WD, EPS, GROWTH = 20, 5, 1e-2, 0.1, 1e-6, 1.05
VARIANTS = {"APOLLO": dict(rank=4, scale=1.0, scale_type="channel"),
            "APOLLO-Mini": dict(rank=1, scale=128.0, scale_type="tensor")}


def _import_apollo():
    """apollo-torch's ``apollo`` and ``random_projector`` modules, or None."""
    path = os.environ.get("APOLLO_TORCH_PATH", "/tmp/apollo_pkg")
    if os.path.isdir(os.path.join(path, "apollo_torch")) and path not in sys.path:
        sys.path.insert(0, path)
    root = next((p for p in sys.path if os.path.isdir(os.path.join(p, "apollo_torch"))), None)
    if root is None:
        return None
    # The package __init__ needs bitsandbytes: register a bare package instead.
    package = types.ModuleType("apollo_torch")
    package.__path__ = [os.path.join(root, "apollo_torch")]
    sys.modules["apollo_torch"] = package
    try:
        import apollo_torch.apollo as apollo
        import apollo_torch.random_projector as projector
    except ImportError:
        return None
    return apollo, projector


def _loads_weights_only(optimizer) -> bool:
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception:  # noqa: BLE001  (UnpicklingError and friends: report, do not crash)
        return False
    return True


def _our_draws(projector):
    """Make apollo-torch's k-th ``stable_randn`` call return our draw of refresh k."""
    calls = []

    def stable_randn(shape, seed, device=None, dtype=torch.float32):
        key = projection_key(0, 0, len(calls))  # seed 0, tensor 0, refresh k
        calls.append(seed)
        generator = torch.Generator(device=device or "cpu").manual_seed(key)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    projector.stable_randn = stable_randn
    return calls


def _run(make_optimizer, w0, grads):
    w = w0.clone().requires_grad_(True)
    opt = make_optimizer(w)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach(), opt


def compare(modules, shape, variant, dtype):
    apollo, projector = modules
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen).to(dtype)
    grads = [(torch.randn(shape, generator=gen) * GROWTH**t).to(dtype) for t in range(STEPS)]
    group = dict(VARIANTS[variant], update_proj_gap=GAP)
    ours, opt_ours = _run(lambda w: ApolloAdamW([{"params": [w], **group, "seed": 0}], lr=LR,
                                                eps=EPS, weight_decay=WD), w0, grads)
    calls = _our_draws(projector)
    theirs, opt_theirs = _run(
        lambda w: apollo.AdamW([{"params": [w], **group, "proj": "random", "proj_type": "std"}],
                               lr=LR, eps=EPS, weight_decay=WD), w0, grads)
    assert len(calls) == -(-STEPS // GAP), calls  # one draw per refresh
    limited = _limited_steps(w0, grads, group)
    diff = (ours - theirs).abs().max().item()
    moved = (ours - w0).abs().max().item()
    return diff, moved, limited, _loads_weights_only(opt_ours), _loads_weights_only(opt_theirs)


def _limited_steps(w0, grads, group) -> int:
    """Steps at which our limiter scaled the update down (its norm ratio hit gamma)."""
    w = w0.clone().requires_grad_(True)
    opt = ApolloAdamW([{"params": [w], **group}], lr=LR, eps=EPS, weight_decay=WD)
    count, previous = 0, None
    for g in grads:
        w.grad = g.clone()
        opt.step()
        norm = opt.state[w]["limiter_norm"].item()
        if previous is not None and abs(norm - 1.01 * previous) <= 1e-6 * norm:
            count += 1
        previous = norm
    return count


def planned_memory() -> None:
    """Planned optimizer-state MiB per method for LLaMA shapes on the meta device."""
    from sparse_spectral.accounting import planned_state_bytes
    from sparse_spectral.methods import make_method
    from sparse_spectral.models import build_lm

    for preset, rank in (("llama_130m", 256), ("llama_1b", 512)):
        cells, full = [], None
        for name, settings in (("full", {}), ("galore", {"rank": rank}),
                               ("apollo", {"rank": rank}), ("apollo", {"rank": rank // 2}),
                               ("apollo_mini", {})):
            model = build_lm(preset, vocab_size=32000, block_size=256, seed=0, device="meta")
            method = make_method(name, **settings)
            state = planned_state_bytes(method.prepare(model), method=method).optimizer_state
            full = full or state
            label = f"{name} r={settings['rank']}" if settings else name
            cells.append(f"{label}: {state / 2**20:.1f} MiB ({state / full:.3f}x)")
        print(f"{preset}: " + "; ".join(cells))


def main() -> int:
    modules = _import_apollo()
    if modules is None:
        print("apollo-torch is not importable; set APOLLO_TORCH_PATH (see the docstring). "
              "Skipped the comparison.")
        planned_memory()
        return 0
    torch.set_num_threads(1)
    print(f"{'shape':>9} {'variant':>12} {'dtype':>8} {'max |ours - theirs|':>20} "
          f"{'max |update|':>13} {'limited steps':>14} {'ours weights_only':>18} "
          f"{'theirs weights_only':>20}")
    for shape in [(64, 32), (32, 64)]:
        for variant in VARIANTS:
            for dtype in [torch.float32, torch.float64]:
                diff, moved, limited, ok_ours, ok_theirs = compare(modules, shape, variant, dtype)
                print(f"{str(shape):>9} {variant:>12} {str(dtype)[6:]:>8} {diff:>20.2e} "
                      f"{moved:>13.2e} {limited:>9}/{STEPS:<4} {str(ok_ours):>18} "
                      f"{str(ok_theirs):>20}")
    planned_memory()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
