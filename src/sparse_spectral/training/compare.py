"""The one comparison loop: methods x seeds under the same settings -> ``results.json``.

``run_compare(task, settings, methods, seeds)`` trains every method with every seed through
:func:`.runner.train_run`, on data prepared once per ``task.data_key``, and writes
``<output_dir>/results.json`` after every method (partial results survive a crash)::

    {"task", "title", "headline": {"key", "label", "higher_is_better"},
     "settings": {flat settings, "methods", "method_lr", "seeds", "threads"},
     "methods": {name: task.aggregate(per-seed summaries) + lr + task.compare_extras},
     ...task.results_extras}

Run folders: ``<output_dir>/<method>`` for one seed, ``<output_dir>/<method>/seed_<s>`` for
several. Rendering the report is the caller's job (``report.render``): the engine writes
results, the report reads them.

Under ``torchrun`` every rank runs every training (data-parallel, :mod:`.distributed`);
rank 0 alone prints and writes ``results.json`` (and the run folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._util.atomic import atomic_write_json
from ..targeting import find_target_modules
from .config import to_flat_dict
from .device import input_dtype
from .distributed import setup
from .runfolder import check_fresh
from .runner import check_choices, check_fsdp2, check_runtime, train_run, unsharded, with_run


def run_compare(task, settings, methods: list[str], seeds: list[int] | None = None,
                method_lr: dict[str, float] | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train each method (for each seed) under ``settings``; write and return the results.

    Args:
        task: a :class:`~sparse_spectral.tasks.base.Task`.
        settings: the task's settings; ``method.name``, ``seed``, ``lr`` and ``output_dir``
            are set per run.
        methods: method names, in table order.
        seeds: seeds (default: ``[settings.seed]``); figures are means over seeds.
        method_lr: learning rate by method name (others use ``settings.optim.lr``).

    Raises:
        ValueError: an unknown method, a method_lr name that is not run, no seeds, or a
            method choice that applies to none of the methods.
    """
    method_lr = dict(method_lr or {})
    settings = task.resolve(settings)  # results record the values every run trains with
    seeds = list(seeds) if seeds else [settings.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed")
    check_choices(task, settings, methods)
    world, device = setup(check_runtime(settings), settings.runtime.parallel,
                          settings.runtime.dist_timeout_s)
    main = world is None or world.is_main
    if world is not None and world.sharded:  # every method, before the first run writes
        for name in methods:
            check_fsdp2(with_run(settings, method=name))
    if set(method_lr) - set(methods):
        raise ValueError(f"method_lr names {sorted(set(method_lr) - set(methods))} are not "
                         f"among the methods run ({', '.join(methods)})")
    task.check(settings)
    out = Path(settings.output.output_dir)
    data_cache: dict[Any, Any] = {}

    def data_for(run):
        key = task.data_key(run)
        if key not in data_cache:
            data_cache[key] = task.to_device(task.prepare_data(run), device,
                                             input_dtype(settings.runtime.precision))
        return data_cache[key]

    flat = {**to_flat_dict(settings), "methods": methods, "method_lr": method_lr,
            "seeds": seeds, "threads": torch.get_num_threads()}
    flat.pop("method")
    results: dict[str, Any] = {"task": task.name, "title": "",
                               "headline": task.headline(settings).to_dict(),
                               "settings": flat, "methods": {}}
    # Refuse an earlier comparison's folder before the first run trains (each run folder
    # also claims itself); --overwrite removes the earlier results first.
    if main or not settings.output.overwrite:
        check_fresh([run_folder(out, name, seed, seeds) for name in methods for seed in seeds],
                    [out / "results.json", out / "report.md", *sorted(out.glob("*.png"))],
                    settings.output.overwrite, "sst compare")
    for name in methods:
        runs = []
        lr = method_lr.get(name, settings.optim.lr)
        for seed in seeds:
            folder = run_folder(out, name, seed, seeds)
            run = with_run(settings, method=name, seed=seed, lr=lr, output_dir=folder)
            data = data_for(run)
            if not results["title"]:
                results["title"] = task.title(settings, data, seeds)
                results.update(task.results_extras(settings, data))
            shown = "the task's default" if lr is None else f"{lr:g}"
            if main:
                print(f"== {name} (lr {shown}, seed {seed}) ==", flush=True)
            outcome = train_run(task, run, data=data, progress=progress)
            summary = dict(outcome.summary)
            for key in ("settings", "task", "headline"):
                summary.pop(key, None)
            if world is not None and world.sharded:  # extras from rank 0's gathered copy
                outcome = unsharded(task, run, data, outcome)
            if outcome is not None:
                summary.update(task.compare_extras(run, data, outcome, first_seed=not runs))
            runs.append(summary)
        entry = task.aggregate(runs, seeds)
        entry["lr"] = lr
        results["settings"]["num_training_steps"] = runs[0].get(
            "num_training_steps", results["settings"].get("num_training_steps"))
        results["methods"][name] = entry
        if main:
            atomic_write_json(out / "results.json", results)
    return results


def run_folder(out: Path, method: str, seed: int, seeds: list[int]) -> Path:
    """``<out>/<method>`` for one seed, ``<out>/<method>/seed_<s>`` for several."""
    return out / method if len(seeds) == 1 else out / method / f"seed_{seed}"


@torch.no_grad()
def weight_spectra(model: nn.Module, method, count: int = 3) -> dict[str, list[float]]:
    """Singular values (descending) of ``count`` target weights: first, middle, last."""
    merged = method.merge(model)
    targets = find_target_modules(merged, "all-linear")
    picks = sorted({0, len(targets) // 2, len(targets) - 1})[:count]
    spectra = {}
    for i in picks:
        name, module = targets[i]
        weight = module.weight.detach().float()
        spectra[name] = torch.linalg.svdvals(weight).tolist()
    return spectra
