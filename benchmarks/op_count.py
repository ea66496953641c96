"""Dispatched aten ops per training step, full rank against SST, per phase.

    python benchmarks/op_count.py --out benchmarks/results/op_count        # ~1 min, 2 cores
    python benchmarks/op_count.py --width 768 --out runs/op_count_768        # LLaMA-130M width

On a GPU each op costs a few microseconds of launch and dispatch however small its tensors,
so at LLaMA-130M scale a step's op count, not its multiply-adds, sets much of SST's step time
against full rank's. Counting needs no GPU: a ``TorchDispatchMode`` sees every aten op that
reaches a kernel (an op decomposed above autograd is seen as its parts; a foreach op counts
once), on any device.

Model: a LLaMA-style decoder of ``--layers`` blocks (heads of width 64, FFN ``8 d / 3``
rounded up to 32: LLaMA-130M's 2048 at ``d = 768``), every block linear layer replaced by SST
at rank ``--rank``, ``--micro`` micro-batches of ``--tokens`` tokens per optimizer step under
``--precision``. SST runs once per forward mode (``factored``, ``composed``: the mode ``auto``
picks by token count, composed at the GPU runs' 16k tokens per micro-batch), since the two
evaluate a layer with different ops. Counts do not depend on the width once the mode is
fixed (the same ops run on bigger tensors), so the default width is small and fast; the
selection schedule is set so that no selection change or re-SVD falls in the counted step
(those happen once per T3 steps, not every step).

Phases, counted on step ``--step`` (after the optimizer state exists): ``fwd_bwd`` (all
micro-batches' forward and backward), ``optimizer`` (``step`` + ``zero_grad``) and
``after_step`` (the method's clamp, renormalisation and schedule). ``kernels`` leaves out
view and metadata ops (``t``, ``view``, ``expand``, ...), which launch nothing on a GPU.
``--time N`` also times N steps of each run on this machine (median wall time, the runs
taking turns); on a CPU that is a noisy, indirect view of the GPU's per-op cost.
Writes ``op_count.json`` and ``op_count.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparse_spectral.methods import make_method
from sparse_spectral.models.presets import ModelPreset, build_lm
from sparse_spectral.training.device import autocast

PHASES = ("fwd_bwd", "optimizer", "after_step")
# Ops that only make a new view of existing data (aten marks most of them is_view).
_METADATA = {"_unsafe_view", "_reshape_alias", "detach", "alias", "lift_fresh"}


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched inside the context, by overload name."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func).removeprefix("aten.")
        self.counts[name] += 1
        if not (func.is_view or func._schema.name.removeprefix("aten::") in _METADATA):
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def lm_shape(width: int, layers: int) -> ModelPreset:
    ffn = 32 * math.ceil(8 * width / 3 / 32)
    return ModelPreset(f"ops_d{width}", "llama", width, layers, max(1, width // 64), ffn)


class Runner:
    """One model, method and optimizer stepping on fixed micro-batches."""

    def __init__(self, method_name: str, args, **options):
        torch.manual_seed(0)
        model = build_lm(lm_shape(args.width, args.layers), args.vocab, args.tokens, seed=0)
        self.method = make_method(method_name, **options)
        self.model = self.method.prepare(model)
        self.optimizer = self.method.build_optimizer(self.model, lr=1e-4)
        self.ids = torch.randint(0, args.vocab, (args.micro, args.tokens),
                                 generator=torch.Generator().manual_seed(1))
        self.precision = args.precision
        self.steps = 0

    def step(self, counters: dict | None = None) -> None:
        """One optimizer step; ``counters`` (one context per phase) count its ops."""
        counters = counters or {phase: contextlib.nullcontext() for phase in PHASES}
        self.steps += 1
        with counters["fwd_bwd"]:
            for micro in self.ids.split(1):
                with autocast(self.precision, self.ids.device):
                    loss = self.model(input_ids=micro, labels=micro).loss / len(self.ids)
                loss.backward()
        with counters["optimizer"]:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with counters["after_step"]:
            self.method.after_step(self.steps, self.optimizer)

    def count(self) -> dict:
        """Op counts of each phase of the next step."""
        counters = {phase: OpCounter() for phase in PHASES}
        self.step(counters)
        return {phase: {"ops": sum(c.counts.values()), "kernels": c.kernels,
                        "top": dict(c.counts.most_common(8))} for phase, c in counters.items()}


def time_steps(runners: dict, repeats: int) -> dict:
    """Median wall time (ms) of ``repeats`` steps per runner, taking turns step by step
    (the order rotates each round) so that load on a shared machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runners[name].step()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per micro-batch")
    parser.add_argument("--micro", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--step", type=int, default=2, help="the step whose ops are counted")
    parser.add_argument("--time", type=int, default=0,
                        help="also time this many steps per run (CPU wall time, median)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    # No layer's clock reaches a T3 boundary in the counted steps (see the docstring).
    sst = dict(rank=args.rank, iteration_interval=10_000, stagger_resvd=False)
    runners = {"full": Runner("full", args)}
    for mode in ("factored", "composed"):
        runners[f"sst_{mode}"] = Runner("sst", args, forward_mode=mode, **sst)
    for runner in runners.values():  # the optimizer state exists from step 1 on
        for _ in range(args.step - 1):
            runner.step()
    runs = {name: runner.count() for name, runner in runners.items()}
    step_ms = time_steps(runners, args.time) if args.time else {}
    lines = [f"# Aten ops per training step: {args.layers} LLaMA blocks of width {args.width}, "
             f"SST r={args.rank}, {args.micro} x {args.tokens} tokens, {args.precision}", "",
             f"torch {torch.__version__}; `python benchmarks/op_count.py` with the settings "
             "above. `kernels`: the ops that are not views.", "",
             "| run | " + " | ".join(f"{p} ops (kernels)" for p in PHASES)
             + " | step ops | / full |" + (" step (ms) | / full |" if step_ms else ""),
             "|---" * (len(PHASES) + 3 + 2 * bool(step_ms)) + "|"]
    full_total = sum(runs["full"][p]["ops"] for p in PHASES)
    for name, phases in runs.items():
        total = sum(phases[p]["ops"] for p in PHASES)
        cells = " | ".join(f"{phases[p]['ops']:,} ({phases[p]['kernels']:,})" for p in PHASES)
        timing = (f" {step_ms[name]:.1f} | {step_ms[name] / step_ms['full']:.2f} |"
                  if step_ms else "")
        lines.append(f"| {name} | {cells} | {total:,} | {total / full_total:.2f} |{timing}")
    lines += ["", "Most frequent ops (fwd_bwd, optimizer, after_step):", ""]
    for name, phases in runs.items():
        for phase in PHASES:
            top = ", ".join(f"{op} {n}" for op, n in phases[phase]["top"].items())
            lines.append(f"- {name} {phase}: {top or '-'}")
    report = "\n".join(lines) + "\n"
    print(report)
    payload = {"settings": vars(args) | {"out": str(args.out)}, "runs": runs,
               "step_ms": step_ms,
               "torch": torch.__version__, "machine": platform.machine()}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "op_count.json").write_text(json.dumps(payload, indent=1) + "\n")
        (args.out / "op_count.md").write_text(report)
    return payload


if __name__ == "__main__":
    main()
