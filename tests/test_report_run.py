"""The report of one ``sst train`` run folder (sparse_spectral.report.run)."""

from __future__ import annotations

import json

import pytest

from sparse_spectral.report import render
from sparse_spectral.report.run import eval_keys, final_figures, load_run


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A real, tiny image-classification run folder (sklearn digits, a few seconds)."""
    from sparse_spectral.tasks.images import IMAGES, ImagesSettings
    from sparse_spectral.training.runner import train_run

    folder = tmp_path_factory.mktemp("digits") / "run"
    settings = ImagesSettings.from_dict(dict(
        dataset="digits", hidden=[16], rank=4, epochs=1, batch_size=32, warmup_steps=2,
        eval_every=10, log_every=5, output_dir=str(folder)))
    summary = train_run(IMAGES, settings, progress=False).summary
    return folder, summary


def test_real_run_folder_report(digits_run):
    folder, summary = digits_run
    written = render(folder)
    assert {p.name for p in written.values()} == {"report.md", "val_loss.png",
                                                 "val_accuracy.png", "train_loss.png"}
    for key in ("val_loss", "val_accuracy", "train_loss"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert written[key].stat().st_size > 5_000  # a drawn curve, not the no-data note
    text = written["report"].read_text()
    assert text.startswith(f"# Training run: {summary['method']}\n")
    assert f"- trainable parameters: {summary['trainable_params']:,d}" in text
    figures = dict(table(text, "| figure | value |"))
    assert float(figures["test_accuracy"]) == pytest.approx(summary["test_accuracy"], rel=1e-5)
    assert float(figures["val_loss"]) == pytest.approx(summary["val_loss"], rel=1e-5)
    assert "trainable_params" not in figures  # shown under size and speed instead
    # The validation table holds each evaluation of metrics.jsonl, in order.
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "val_loss" in r]
    curve = table(text, "| step | val_loss | val_accuracy |")
    assert [int(row[0]) for row in curve] == [r["step"] for r in evaluations]
    assert float(curve[-1][2]) == pytest.approx(evaluations[-1]["val_accuracy"], rel=1e-5)
    assert "Training loss: " in text and "logged points" in text
    assert "![val accuracy](val_accuracy.png)" in text


def test_generic_figures_nested_splits_and_non_finite_values(tmp_path):
    summary = {"method": "sst", "seed": 3, "settings": {"task": "lp", "lr": 0.01},
               "trainable_params": 50, "total_params": 200, "step_time_s": 0.002,
               "best_epoch": 4, "converged": True, "note": "graph",
               "val": {"roc": 0.75, "ap": 0.5}, "test": {"roc": 0.7}, "curve": []}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    lines = [{"step": e, "epoch": e, "train_loss": 1.0 / e, "val_roc": 0.5 + e / 100,
              "val_score": "nan" if e == 4 else 0.6} for e in range(1, 101)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert final_figures(summary) == {"seed": 3, "best_epoch": 4, "val_roc": 0.75,
                                      "val_ap": 0.5, "test_roc": 0.7}
    run = load_run(tmp_path)
    assert eval_keys(run.records) == ["val_roc", "val_score"]
    written = render(tmp_path)
    # No val_loss logged: its plot is still written (with a note), next to the others.
    assert set(written) == {"report", "val_loss", "val_roc", "val_score", "train_loss"}
    text = written["report"].read_text()
    assert "Task: lp" in text and "- **note**: graph" in text
    assert "- trainable parameters: 50 (25.0% of 200)" in text
    curve = table(text, "| epoch | val_roc | val_score |")
    # 100 evaluations thinned to every third one plus the last; "nan" read as NaN.
    assert [row[0] for row in curve[:3]] == ["1", "4", "7"] and curve[-1][0] == "100"
    assert curve[1] == ["4", "0.54", "nan"]
    assert "34 of 100 evaluations shown" in text
    assert "Training loss: 1 at epoch 1, 0.01 at epoch 100 (100 logged points" in text


def test_a_bad_metrics_line_names_the_file_and_line(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"method": "full"}))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        render(tmp_path)
