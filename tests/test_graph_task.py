"""The graph task: tiny HyboNet runs with every method, the comparison report, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_spectral.cli import main
from sparse_spectral.hyperbolic import random_normal
from sparse_spectral.report.graph import gap_shares, load_graph_results
from sparse_spectral.tasks.graph import (
    GRAPH,
    HYBONET_DEFAULTS,
    GraphSettings,
    load_data,
    poincare_projection,
)
from sparse_spectral.training.runner import train_run, with_run


def train_once(settings, data, progress=False):
    return train_run(GRAPH, settings, data=data, progress=progress)


def run_compare(settings, methods, seeds, progress=False):
    from engine_helpers import compare_and_render

    return compare_and_render(GRAPH, settings, methods, seeds=seeds, progress=progress)

METHODS = ["full", "lora", "relora", "galore", "sst"]


def tiny(reference_data, tmp_path, dataset, task, **overrides) -> GraphSettings:
    """A few epochs, no early stop; a larger lr than HyboNet's so that 10 steps move."""
    values = dict(dataset=dataset, task=task, data_dir=str(reference_data), epochs=10,
                  min_epochs=0, patience=100, lr=0.05, rank=2, save_embeddings=False,
                  output_dir=str(tmp_path / f"{dataset}-{task}"))
    if (dataset, task) == ("airport", "nc"):
        values["num_layers"] = 3  # two graph layers instead of five: faster
    values.update(overrides)
    return GraphSettings.from_dict(values)


@pytest.fixture(scope="module")
def graphs(reference_data):
    """Airport NC (corrected split) and Disease LP (corrected split), loaded once."""
    out = {}
    for dataset, task in (("airport", "nc"), ("disease", "lp")):
        out[task] = load_data(GraphSettings(dataset=dataset, task=task,
                                            data_dir=str(reference_data)))
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset,task", [("airport", "nc"), ("disease", "lp")])
def test_tiny_run_improves_validation(reference_data, tmp_path, graphs, dataset, task, method):
    settings = tiny(reference_data, tmp_path, dataset, task, method=method)
    run = train_once(settings, graphs[task], progress=False)
    summary = run.summary
    first = summary["curve"][0]["val_score"]
    assert summary["best_val_score"] > first + 0.02, (first, summary["best_val_score"])
    # the test metrics are those of the best validation epoch, and the summary is on disk
    assert summary["best_epoch"] == max(summary["curve"],
                                        key=lambda p: p["val_score"])["epoch"]
    on_disk = json.loads((tmp_path / f"{dataset}-{task}" / "summary.json").read_text())
    assert on_disk["test"] == summary["test"]


def test_same_seed_same_run_and_negatives_from_a_copy(reference_data, tmp_path, graphs):
    """LP negatives come from a copy of ``data.rng``: a second run repeats the first."""
    data = graphs["lp"]
    state = data.rng.get_state()[1].copy()
    settings = tiny(reference_data, tmp_path, "disease", "lp", method="sst", epochs=4)
    first = train_once(settings, data, progress=False).summary
    second = train_once(with_run(settings, output_dir=tmp_path / "again"), data,
                        progress=False).summary
    assert np.array_equal(data.rng.get_state()[1], state)
    assert first["curve"] == second["curve"] and first["test"] == second["test"]
    other = train_once(with_run(settings, seed=7, output_dir=tmp_path / "seed7"), data,
                       progress=False).summary
    assert other["curve"] != first["curve"]


def test_early_stopping_and_selection(reference_data, tmp_path, graphs):
    """Stops ``patience`` evaluations after the best once past ``min_epochs``."""
    # lr 5 is far above HyboNet's: the train loss jumps ~1e6-fold, which the divergence
    # guard would stop (off here: this test is about early stopping)
    settings = tiny(reference_data, tmp_path, "disease", "lp", method="full", lr=5.0,
                    epochs=40, patience=3, min_epochs=0, divergence_factor=0)
    summary = train_once(settings, graphs["lp"], progress=False).summary
    if summary["epochs_run"] < 40:
        assert summary["epochs_run"] - summary["best_epoch"] == 3
    scores = [p["val_score"] for p in summary["curve"]]
    assert summary["best_val_score"] == max(scores)


def test_compare_writes_results_report_and_plots(reference_data, tmp_path, graphs):
    settings = tiny(reference_data, tmp_path, "disease", "lp", epochs=3,
                    output_dir=str(tmp_path / "cmp"))
    results = run_compare(settings, ["full", "lora", "sst"], seeds=[1, 2], progress=False)
    loaded = load_graph_results(tmp_path / "cmp")
    assert loaded["methods"].keys() == results["methods"].keys()
    for entry in loaded["methods"].values():
        rocs = [r["test"]["roc"] for r in entry["runs"]]
        assert entry["test_roc"]["mean"] == pytest.approx(np.mean(rocs))
        assert entry["test_roc"]["std"] == pytest.approx(np.std(rocs, ddof=1))
        points = np.array(entry["runs"][0]["embedding_2d"])
        assert points.shape == (graphs["lp"].num_nodes, 2)
        assert (np.linalg.norm(points, axis=1) < 1).all()
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "±" in report and "test ROC-AUC" in report and "gap" in report
    for name in ("val_curves.png", "embeddings.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 1000
    (tmp_path / "cmp" / "report.md").unlink()
    assert main(["report", str(tmp_path / "cmp")]) == 0  # dispatches on task "graph"
    assert (tmp_path / "cmp" / "report.md").read_text() == report


def test_gap_shares_higher_is_better():
    def entry(f1):
        return {"test_acc": {"mean": f1, "std": 0.0}, "test_f1": {"mean": f1, "std": 0.0}}

    results = {"settings": {"task": "nc"},
               "methods": {"full": entry(0.9), "lora": entry(0.6), "relora": entry(0.7),
                           "galore": entry(0.65), "sst": entry(0.85)}}
    share, sentence = gap_shares(results)["f1"]
    assert share == pytest.approx((0.7 - 0.85) / (0.7 - 0.9))
    assert "ReLoRA*" in sentence
    results["methods"]["galore"] = entry(0.95)  # a baseline above full rank: no gap
    assert gap_shares(results)["f1"][0] is None


def test_poincare_projection_stays_in_disk():
    points = random_normal(200, 16, k=1.0)  # (200, 16) on the hyperboloid
    xy = np.array(poincare_projection(points))
    assert xy.shape == (200, 2) and (np.linalg.norm(xy, axis=1) < 1).all()
    low = random_normal(5, 3, k=1.0)  # 2 space dimensions: no projection
    expected = low[:, 1:] / (1 + low[:, :1])
    assert np.allclose(poincare_projection(low), expected.numpy(), atol=1e-6)


def test_settings_take_hybonet_defaults_and_overrides():
    resolved = GraphSettings(dataset="cora", task="nc").resolved()
    assert (resolved.optim.lr, resolved.num_layers, resolved.dropout,
            resolved.optim.weight_decay, resolved.margin, resolved.optim.grad_clip) == \
        (0.02, 3, 0.9, 1e-2, 1.0, 1.0)
    assert GraphSettings.from_dict(dict(dataset="airport", task="nc", lr=0.1)).resolved() \
        .optim.lr == 0.1
    assert set(HYBONET_DEFAULTS) >= {(d, t) for d in ("cora", "airport", "disease")
                                     for t in ("nc", "lp")}
    with pytest.raises(ValueError, match="dataset='pubmed' is unknown; allowed: cora"):
        GraphSettings(dataset="pubmed")


@pytest.mark.parametrize("argv,needles", [
    (["--dataset", "atlantis"], ["atlantis", "allowed: cora, citeseer, airport, disease"]),
    (["--task", "gc"], ["task='gc'", "allowed: nc, lp"]),
    (["--method", "dora"], ["dora", "available"]),
    (["--dataset", "disease", "--task", "lp", "--rank", "13"],
     ["rank=13", "encoder.layers.0", "16 x 12", "[1, 12]"]),
])
def test_cli_bad_input_one_clear_message(reference_data, tmp_path, capsys, argv, needles):
    code = main(["train", "graph", "--data-dir", str(reference_data), "--epochs", "1",
                 "--output_dir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sst: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_cli_missing_files(tmp_path, capsys):
    code = main(["train", "graph", "--dataset", "cora", "--data-dir", str(tmp_path / "empty"),
                 "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--data-dir" in err and "empty" in err, err


def test_cli_train_graph_runs(reference_data, tmp_path, capsys):
    code = main(["train", "graph", "--dataset", "disease", "--task", "lp", "--method", "sst",
                 "--rank", "2", "--epochs", "2", "--data-dir", str(reference_data),
                 "--output_dir", str(tmp_path / "run"), "--no_progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sst: best val epoch" in out and "test roc" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["settings"]["method"]["rank"] == 2


def test_resume_is_bit_exact_through_the_one_loop(reference_data, tmp_path, graphs):
    """Graph runs checkpoint like every task: model, optimizers, LP negative stream, dropout
    RNG and the early-stopping state come back, so a resumed run ends where a straight one
    does."""
    from safetensors.torch import load_file

    common = dict(method="sst", epochs=10, dropout=0.3, rank=2, iteration_interval=3)
    straight = tiny(reference_data, tmp_path, "disease", "lp", output_dir=str(tmp_path / "a"),
                    **common)
    a = train_once(straight, graphs["lp"]).summary
    interrupted = tiny(reference_data, tmp_path, "disease", "lp",
                       output_dir=str(tmp_path / "b"), save_every=4, **common)
    train_once(interrupted, graphs["lp"])
    root = tmp_path / "b" / "checkpoints"
    for f in (root / "step_000010").iterdir():
        f.unlink()
    (root / "step_000010").rmdir()
    (root / "latest").write_text("step_000008\n")
    b = train_run(GRAPH, interrupted, data=graphs["lp"], resume=True, progress=False).summary
    first = load_file(tmp_path / "a" / "checkpoints" / "step_000010" / "model.safetensors")
    second = load_file(root / "step_000010" / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert (first[key] == second[key]).all(), key
    assert a["curve"] == b["curve"] and a["test"] == b["test"]
    assert a["best_epoch"] == b["best_epoch"] and len(b["curve"]) == 10


def test_early_stop_saves_a_final_checkpoint(reference_data, tmp_path, graphs):
    from sparse_spectral.training.checkpoint import latest_checkpoint

    # (the divergence guard off: the diverging run is what early stopping stops here)
    settings = tiny(reference_data, tmp_path, "disease", "lp", method="full", lr=5.0,
                    epochs=60, patience=2, min_epochs=0, divergence_factor=0)
    summary = train_once(settings, graphs["lp"]).summary
    assert summary["epochs_run"] < 60  # lr 5 diverges from the best epoch quickly
    assert latest_checkpoint(tmp_path / "disease-lp").name == f"step_{summary['epochs_run']:06d}"
