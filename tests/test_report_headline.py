"""The headline metric a results file declares: which metric the gap and best baseline use."""

from __future__ import annotations

import copy
from dataclasses import asdict

import pytest
from report_examples import graph_results, images_results, lm_results, mt_results, write_json

from sparse_spectral.report import DEFAULT_HEADLINES, gap_closed, gap_shares, render
from sparse_spectral.report.mt import bleu_gap_closed


def gap_line(folder) -> str:
    """The report's sentence about the gap SST closes."""
    lines = (folder / "report.md").read_text().splitlines()
    return next(line for line in lines if "SST closes" in line or "gap closed by SST" in line)


@pytest.fixture
def scored_lm() -> dict:
    """LM results whose perplexities and a "score" rank the baselines differently."""
    results = lm_results({"full": 20.0, "lora": 25.0, "relora": 30.0, "sst": 22.0})
    for name, score in {"full": 0.9, "lora": 0.6, "relora": 0.7, "sst": 0.8}.items():
        results["methods"][name]["score"] = score
    return results


@pytest.mark.parametrize("declared, sentence, share", [
    # No headline: validation perplexity, lower is better.
    (None, "SST closes 60.0% of the validation-perplexity gap between the best other low-rank "
     "method (LoRA, 25.00) and full rank (20.00): (best other - SST) / (best other - full) "
     "with SST at 22.00.", 0.6),
    # ReLoRA* (0.7) beats LoRA (0.6) when higher is better.
    ({"key": "score", "label": "test score", "higher_is_better": True},
     "SST closes 50.0% of the test-score gap between the best other low-rank method "
     "(ReLoRA*, 0.70) and full rank (0.90): (best other - SST) / (best other - full) with "
     "SST at 0.80.", 0.5),
    # Lower is better flips the best baseline: LoRA (0.6) beats full rank, no gap.
    ({"key": "score", "label": "test score", "higher_is_better": False},
     "Share of the gap closed by SST: not computed; the best other low-rank method (LoRA, "
     "0.60) is not worse than full rank (0.90), so there is no gap to close.", None),
], ids=["default", "higher-is-better", "lower-is-better"])
def test_lm_headline_picks_the_metric_and_the_best_baseline(tmp_path, scored_lm, declared,
                                                            sentence, share):
    if declared is not None:
        scored_lm["headline"] = declared
    write_json(tmp_path / "results.json", scored_lm)
    render(tmp_path)
    assert gap_line(tmp_path) == sentence
    assert gap_closed(scored_lm) == (None if share is None else pytest.approx(share))


def test_mt_headline_names_its_metric(tmp_path):
    results = mt_results({"full": 30.0, "lora": 20.0, "sst": 25.0})
    for name, chrf in {"full": 60.0, "lora": 40.0, "sst": 55.0}.items():
        results["methods"][name]["chrf"] = chrf
    results["headline"] = {"key": "chrf", "label": "test chrF", "higher_is_better": True}
    write_json(tmp_path / "results.json", results)
    render(tmp_path)
    assert gap_line(tmp_path).startswith("SST closes 75.0% of the test-chrF gap between the "
                                         "best other low-rank method (LoRA, 40.00)")
    assert bleu_gap_closed(results) == pytest.approx(0.75)
    del results["methods"]["lora"]
    write_json(tmp_path / "results.json", results)
    render(tmp_path)
    assert gap_line(tmp_path).startswith("Share of the chrF gap closed by SST: not computed")


def test_graph_headline_comes_first_then_the_task_metrics():
    results = graph_results("nc", {"full": 0.9, "lora": 0.6, "sst": 0.8})
    for name, acc in {"full": 0.8, "lora": 0.4, "sst": 0.7}.items():
        results["methods"][name]["test_acc"] = {"mean": acc, "std": 0.0}
    assert list(gap_shares(results)) == ["f1"]  # default NC headline: F1
    results["headline"] = {"key": "test_acc", "label": "test accuracy",
                           "higher_is_better": True}
    shares = gap_shares(results)
    assert list(shares) == ["acc", "f1"]
    assert shares["acc"][0] == pytest.approx(0.75)
    assert shares["acc"][1].startswith("SST closes 75.0% of the test accuracy gap")
    assert shares["f1"][0] == pytest.approx((0.6 - 0.8) / (0.6 - 0.9))


@pytest.mark.parametrize("task, results", [
    ("lm", lm_results({"full": 20.0, "lora": 30.0, "sst": 25.0})),
    ("mt", mt_results({"full": 30.0, "lora": 20.0, "sst": 25.0})),
    ("images", images_results({"full": 0.9, "lora": 0.7, "sst": 0.8})),
    ("graph:nc", graph_results("nc", {"full": 0.9, "lora": 0.7, "sst": 0.8})),
    ("graph:lp", graph_results("lp", {"full": 0.9, "lora": 0.7, "sst": 0.8})),
])
def test_declaring_the_default_headline_changes_nothing(tmp_path, task, results):
    write_json(tmp_path / "old" / "results.json", results)
    declared = copy.deepcopy(results)
    declared["headline"] = asdict(DEFAULT_HEADLINES[task])
    write_json(tmp_path / "new" / "results.json", declared)
    render(tmp_path / "old")
    render(tmp_path / "new")
    old = (tmp_path / "old" / "report.md").read_text()
    assert "SST closes 50.0%" in old
    assert (tmp_path / "new" / "report.md").read_text() == old


@pytest.mark.parametrize("headline, message", [
    ({"key": "score", "label": "score"}, "'headline' is missing key 'higher_is_better'"),
    ({"key": "score", "label": "score", "higher_is_better": "yes"},
     r"'headline'\['higher_is_better'\] must be a bool"),
    ({"key": 3, "label": "score", "higher_is_better": True}, r"'headline'\['key'\] must be"),
    ("score", "'headline' must be an object"),
])
def test_a_malformed_headline_names_the_file_and_key(tmp_path, headline, message):
    results = lm_results({"full": 20.0, "sst": 25.0})
    results["headline"] = headline
    write_json(tmp_path / "results.json", results)
    with pytest.raises(ValueError, match=message) as info:
        render(tmp_path)
    assert str(tmp_path / "results.json") in str(info.value)


def test_a_multi_seed_comparison_reports_the_share_within_each_seed(tmp_path):
    """Three seeds: the share of each seed from that seed's runs, their mean and spread;
    APOLLO counts as a low-rank baseline (the best one here)."""
    per_seed = {"full": [20.0, 21.0, 19.0], "lora": [25.0, 26.0, 23.0],
                "apollo": [24.0, 24.0, 24.0], "sst": [22.0, 22.0, 21.0]}
    results = lm_results({name: sum(v) / 3 for name, v in per_seed.items()})
    for name, values in per_seed.items():
        results["methods"][name]["seeds"] = [{"seed": s, "val_ppl": v}
                                             for s, v in zip((0, 1, 2), values)]
    write_json(tmp_path / "results.json", results)
    render(tmp_path)
    line = gap_line(tmp_path)
    # Means: full 20, APOLLO 24 (best of LoRA 24.67, APOLLO 24), SST 21.67: 58.3%.
    assert "best other low-rank method (APOLLO, 24.00)" in line and "58.3%" in line
    # Seed 0: (24-22)/(24-20) 50%; seed 1: (24-22)/(24-21) 66.7%; seed 2: (23-21)/(23-19) 50%
    # (LoRA is seed 2's best baseline).
    assert "Within each seed: 50.0%, 66.7%, 50.0% (mean 55.6%, std 9.6%)." in line
    del results["methods"]["lora"]["seeds"]  # one method without per-seed figures: no spread
    write_json(tmp_path / "results.json", results)
    render(tmp_path)
    assert "Within each seed" not in gap_line(tmp_path)
