"""Ablation runner: variants, correlations, a tiny images ablation end to end, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_spectral.cli import main
from sparse_spectral.cli.flags import parse_set
from sparse_spectral.experiments.ablation import (
    AblationVariant,
    default_variants,
    pearson,
    run_ablation,
    select_variants,
    trace_correlation,
    variant_settings,
)
from sparse_spectral.methods import SST_VARIANTS
from sparse_spectral.report import render
from sparse_spectral.tasks.graph import GraphSettings
from sparse_spectral.tasks.images import IMAGES, ImagesSettings
from sparse_spectral.tasks.registry import get_task

TINY_VALUES = {"dataset": "digits", "hidden": [16], "rank": 4, "epochs": 1, "batch_size": 64,
               "warmup_steps": 2, "eval_every": 10, "log_every": 1, "lr": 3e-3,
               "method_options": {"iteration_interval": 4}}
TINY = ImagesSettings.from_dict(TINY_VALUES)


def test_pearson_matches_numpy_and_is_none_when_undefined():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50) + np.linspace(0, 3, 50)
    assert pearson(a.tolist(), b.tolist()) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert pearson([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]) is None
    assert pearson([1.0, 2.0], [2.0, 1.0]) is None
    with pytest.raises(ValueError, match="lengths differ: 2 and 3"):
        pearson([1.0, 2.0], [1.0, 2.0, 3.0])


def test_trace_correlation_uses_common_steps_only():
    trace = [{"step": s, "grad_norm": float(s)} for s in (1, 2, 3, 4, 5)]
    # The reference skips step 3 and logs an extra step 6: only 1, 2, 4, 5 are compared.
    reference = [{"step": s, "grad_norm": v} for s, v in ((1, 5.0), (2, 4.0), (4, 2.0),
                                                          (5, 1.0), (6, 9.0))]
    assert trace_correlation(trace, reference) == pytest.approx(-1.0)


def test_default_variants_cover_the_paper_ablation():
    variants = default_variants([10, 200], [2])
    labels = [v.label for v in variants]
    assert labels[0] == "sst" and set(SST_VARIANTS) <= set(labels)
    assert {"sst T3=10", "sst T3=200", "sst T2=2", "full", "relora"} <= set(labels)
    t3 = next(v for v in variants if v.label == "sst T3=10")
    assert t3.method == "sst" and t3.options == {"iteration_interval": 10}
    assert [v.label for v in select_variants(variants, ["full", "sst"])] == ["sst", "full"]
    with pytest.raises(ValueError, match=r"unknown ablation variant\(s\) \['sst-bogus'\]"):
        select_variants(variants, ["sst-bogus"])


def test_rewarmup_turns_staggering_off_for_sst_only(tmp_path):
    rewarm = ImagesSettings.from_dict({"method_options": {"restart_warmup_steps": 5}})

    def options(variant):
        return variant_settings(rewarm, variant, tmp_path, None).method.options

    assert options(AblationVariant("sst", "sst", "g"))["stagger_resvd"] is False
    assert "stagger_resvd" not in options(AblationVariant("r", "relora", "g"))


def test_t3_variant_sets_the_run_interval_over_the_base_one(tmp_path):
    variant = next(v for v in default_variants([7]) if v.label == "sst T3=7")
    run = variant_settings(TINY, variant, tmp_path / "v", 1e-2)
    assert run.method.interval == 7 and TINY.method.interval == 4
    assert run.optim.lr == 1e-2 and run.output.output_dir == str(tmp_path / "v")


def test_overrides_parse_json_values_and_method_options():
    out = parse_set(["epochs=1", "dataset=digits", "method.options.sampler=uniform"])
    assert out == {"epochs": 1, "dataset": "digits",
                   "method": {"options": {"sampler": "uniform"}}}
    with pytest.raises(ValueError, match="must look like key=value"):
        parse_set(["epochs"])


def test_unknown_task_and_bad_variant_lr_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'cv'; available: graph, images, lm, "
                                         r"mt"):
        get_task("cv")
    with pytest.raises(ValueError, match=r"variant_lr names \['lora'\] match no variant"):
        run_ablation(IMAGES, TINY, [AblationVariant("sst", "sst", "g")], tmp_path,
                     variant_lr={"lora": 1e-3})


def test_tiny_images_ablation_writes_table_and_plots(tmp_path):
    variants = select_variants(default_variants([2]),
                               ["sst", "sst-uniform", "sst-random-init", "sst T3=2", "full",
                                "relora"])
    results = run_ablation(IMAGES, TINY, variants, tmp_path / "abl", progress=False,
                           variant_lr={"full": 1e-3})
    render(tmp_path / "abl")
    assert results["variants"]["full"]["lr"] == 1e-3
    assert results["variants"]["sst"]["lr"] == TINY_VALUES["lr"]
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert saved["order"] == [v.label for v in variants]
    assert saved["metric"] == "test accuracy" and saved["higher_is_better"] is True
    full = results["variants"]["full"]
    assert full["grad_norm_corr_full"] == pytest.approx(1.0)
    steps = [p["step"] for p in full["grad_norm"]]
    assert steps == list(range(1, len(steps) + 1))  # log_every=1: every step
    for label in ("sst", "relora", "sst T3=2"):
        corr = results["variants"][label]["grad_norm_corr_full"]
        assert corr is not None and -1.0 <= corr <= 1.0
    assert results["variants"]["sst T3=2"]["options"] == {"iteration_interval": 2}
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| reference | full | full | 0.001 |" in table
    assert "| sampler | sst-uniform |" in table and "| iteration interval T3 | sst T3=2 |" in table
    assert "paper: SST 0.85, ReLoRA* 0.58" in table
    for name in ("ablation.png", "grad_norm.png"):
        assert (tmp_path / "abl" / name).stat().st_size > 1000
    # Each variant trained in its own folder with its own options.
    summary = json.loads((tmp_path / "abl" / "sst_T3=2" / "summary.json").read_text())
    assert summary["settings"]["method"]["interval"] == 2


def test_tiny_graph_ablation_logs_grad_norms_per_epoch(reference_data, tmp_path):
    settings = GraphSettings.from_dict({
        "dataset": "disease", "task": "lp", "data_dir": str(reference_data), "epochs": 6,
        "min_epochs": 0, "patience": 100, "lr": 0.05, "rank": 2,
        "method_options": {"iteration_interval": 2}})
    variants = select_variants(default_variants(), ["sst", "sst-uniform", "full", "relora"])
    results = run_ablation(get_task("graph"), settings, variants, tmp_path / "g",
                           progress=False)
    render(tmp_path / "g")
    assert results["higher_is_better"] is True
    for label in ("sst", "sst-uniform", "full", "relora"):
        entry = results["variants"][label]
        assert 0.0 <= entry["metric"] <= 1.0  # test ROC-AUC at the best validation epoch
        assert [p["step"] for p in entry["grad_norm"]] == list(range(1, 7))
        assert all(p["grad_norm"] > 0 for p in entry["grad_norm"])
    assert results["variants"]["full"]["grad_norm_corr_full"] == pytest.approx(1.0)
    assert (tmp_path / "g" / "ablation.md").is_file()


def test_cli_ablate_from_config(tmp_path, capsys):
    config = tmp_path / "ablate.toml"
    config.write_text('variants = ["sst", "sst-top-r"]\n[settings]\ndataset = "digits"\n'
                      'hidden = [16]\nrank = 4\nepochs = 1\nbatch_size = 128\nwarmup_steps = 2\n'
                      '[settings.method_options]\niteration_interval = 3\n')
    code = main(["ablate", "images", "--config", str(config), "--set", "lr=0.003",
                 "--output_dir", str(tmp_path / "out"), "--no_progress"])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert saved["order"] == ["sst", "sst-top-r"]
    assert saved["settings"]["lr"] == 0.003
    assert "sst-top-r" in capsys.readouterr().out
    config.write_text("colour = 1\n")
    assert main(["ablate", "images", "--config", str(config)]) == 2
    assert "unknown top-level key(s) ['colour']" in capsys.readouterr().err
