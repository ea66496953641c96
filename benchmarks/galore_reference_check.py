"""Compare our GaLoreAdamW with the published galore-torch optimizer, numerically.

    pip install --target /tmp/galore_pkg galore-torch --no-deps   # throwaway, not the venv
    GALORE_TORCH_PATH=/tmp/galore_pkg python benchmarks/galore_reference_check.py

galore-torch is never a dependency of this project; without it the script says so and exits
0. Its package ``__init__`` imports ``bitsandbytes`` (for the 8-bit variant), so the script
loads ``galore_torch.adamw`` alone. It prints, per weight shape and proj_type, the largest
difference between the two optimizers' weights after a run that crosses several projection
refreshes, in float32 and float64 (both SVDs run in float32), with ``eps = 0`` (the two
arithmetics agree up to rounding) and with ``eps = 1e-6`` (galore-torch adds eps to the
uncorrected ``sqrt(v)``, we add it after the bias correction, as the paper and
torch.optim.AdamW do), and whether each optimizer's state_dict loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import sys
import types

import torch

from sparse_spectral.methods.galore_optim import GaLoreAdamW

STEPS, GAP, RANK, LR, WD = 20, 5, 4, 1e-2, 0.1


def _import_galore_adamw():
    """galore-torch's AdamW class, or None when the package is not importable."""
    path = os.environ.get("GALORE_TORCH_PATH", "/tmp/galore_pkg")
    if os.path.isdir(os.path.join(path, "galore_torch")) and path not in sys.path:
        sys.path.insert(0, path)
    try:
        import galore_torch.adamw as adamw
    except ImportError:
        # The package __init__ needs bitsandbytes: register a bare package and retry.
        root = next((p for p in sys.path if os.path.isdir(os.path.join(p, "galore_torch"))), None)
        if root is None:
            return None
        package = types.ModuleType("galore_torch")
        package.__path__ = [os.path.join(root, "galore_torch")]
        sys.modules["galore_torch"] = package
        try:
            import galore_torch.adamw as adamw
        except ImportError:
            return None
    return adamw.AdamW


def _loads_weights_only(optimizer) -> bool:
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
    except Exception:  # noqa: BLE001  (UnpicklingError and friends: report, do not crash)
        return False
    return True


def _run(make_optimizer, w0, grads):
    w = w0.clone().requires_grad_(True)
    opt = make_optimizer(w)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach(), opt


def compare(theirs_cls, shape, proj_type, eps, dtype):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen).to(dtype)
    grads = [torch.randn(shape, generator=gen).to(dtype) for _ in range(STEPS)]
    group = dict(rank=RANK, update_proj_gap=GAP, scale=0.25, proj_type=proj_type)
    ours, opt_ours = _run(lambda w: GaLoreAdamW([{"params": [w], **group}], lr=LR, eps=eps,
                                                weight_decay=WD), w0, grads)
    theirs, opt_theirs = _run(
        lambda w: theirs_cls([{"params": [w], **group, "proj_quant": False}], lr=LR, eps=eps,
                             weight_decay=WD, no_deprecation_warning=True), w0, grads)
    diff = (ours - theirs).abs().max().item()
    moved = (ours - w0).abs().max().item()
    return diff, moved, _loads_weights_only(opt_ours), _loads_weights_only(opt_theirs)


def main() -> int:
    theirs_cls = _import_galore_adamw()
    if theirs_cls is None:
        print("galore-torch is not importable; set GALORE_TORCH_PATH (see the docstring). Skipped.")
        return 0
    torch.set_num_threads(1)
    print(f"{'shape':>10} {'dtype':>8} {'proj_type':>12} {'eps':>7} {'max |ours - theirs|':>20} "
          f"{'max |update|':>13} {'ours weights_only':>18} {'theirs weights_only':>20}")
    for shape in [(64, 32), (32, 64)]:
        for dtype in [torch.float32, torch.float64]:
            for proj_type in ["std", "reverse_std", "left", "right"]:
                for eps in [0.0, 1e-6]:
                    diff, moved, ok_ours, ok_theirs = compare(theirs_cls, shape, proj_type, eps,
                                                              dtype)
                    print(f"{str(shape):>10} {str(dtype)[6:]:>8} {proj_type:>12} {eps:>7.0e} "
                          f"{diff:>20.2e} {moved:>13.2e} {str(ok_ours):>18} "
                          f"{str(ok_theirs):>20}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
