"""Images task: settings checks, training improves, compare writes the report, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import compare_and_render, train_summary

from sparse_spectral.cli import main
from sparse_spectral.tasks.images import (
    IMAGES,
    ImagesSettings,
    epoch_batches,
    evaluate,
    prepare_data,
)


def run_train(settings, **kw):
    return train_summary(IMAGES, settings, **kw)


def run_compare(settings, methods, method_lr, seeds=None, progress=True):
    return compare_and_render(IMAGES, settings, methods, method_lr, seeds, progress)


def digits(tmp_path, **changes):
    values = dict(dataset="digits", hidden=[32, 32], rank=4, epochs=4, batch_size=32,
                  warmup_steps=5, eval_every=20, output_dir=str(tmp_path / "run"),
                  method_options={"iteration_interval": 10})
    return ImagesSettings.from_dict({**values, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"dataset": "cifar"}, r"dataset='cifar' is unknown; allowed: \['fashion-mnist', 'digits'\]"),
    ({"hidden": []}, r"hidden=\[\] must be a non-empty list"),
    ({"hidden": [64, 0]}, r"hidden=\[64, 0\]"),
    ({"rank": 0}, "rank=0 must be an int >= 1"),
    ({"val_fraction": 1.0}, r"val_fraction=1.0 must be in \(0, 1\)"),
    ({"epochs": 0}, "epochs=0 must be > 0"),
])
def test_bad_settings_name_the_value(changes, message):
    with pytest.raises(ValueError, match=message):
        ImagesSettings.from_dict(changes)


def test_hidden_widths_from_text_and_batches_cover_each_row_once():
    assert ImagesSettings(hidden="128,64").hidden == [128, 64]
    batches = epoch_batches(10, 3, seed=0, epoch=2)
    assert batches.shape == (3, 3) and len(set(batches.flatten().tolist())) == 9
    assert torch.equal(batches, epoch_batches(10, 3, seed=0, epoch=2))
    assert not torch.equal(batches, epoch_batches(10, 3, seed=0, epoch=3))


@pytest.mark.parametrize("method", ["sst", "relora"])
def test_digits_training_improves_on_untrained_model(tmp_path, method):
    settings = digits(tmp_path, method=method, lr=3e-3)
    data = prepare_data(settings)
    model = IMAGES.build_model(settings, data)
    before = evaluate(model, *data.splits["validation"])
    summary = run_train(settings, progress=False, data=data)
    assert summary["val_loss"] < before["loss"] - 0.5
    assert summary["val_accuracy"] > before["accuracy"] + 0.4
    assert summary["test_accuracy"] > 0.6  # ten classes: chance is 0.1
    # Only the hidden layers are converted; the head stays a dense nn.Linear.
    assert summary["trainable_params"] < summary["total_params"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("grad_norm" in line for line in lines)


def test_fashion_mnist_short_run_learns(tmp_path, reference_data):
    settings = ImagesSettings.from_dict(dict(
        data_dir=str(reference_data), hidden=[64], rank=8, epochs=None, num_training_steps=60,
        batch_size=64, warmup_steps=5, eval_every=60, train_limit=4000, lr=3e-3,
        output_dir=str(tmp_path / "fm")))
    summary = run_train(settings, progress=False)
    assert summary["dataset"] == "Fashion-MNIST"
    assert summary["test_accuracy"] > 0.5


def test_compare_writes_results_and_report(tmp_path):
    settings = digits(tmp_path, epochs=1, hidden=[16], output_dir=str(tmp_path / "cmp"))
    results = run_compare(settings, ["full", "lora", "sst"], {"sst": 3e-3}, seeds=[0, 1],
                          progress=False)
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert saved["task"] == "images" and list(saved["methods"]) == ["full", "lora", "sst"]
    sst = results["methods"]["sst"]
    assert sst["lr"] == 3e-3 and [s["seed"] for s in sst["seeds"]] == [0, 1]
    mean = sum(s["test_accuracy"] for s in sst["seeds"]) / 2
    assert sst["test_accuracy"] == pytest.approx(mean)
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| sst |" in report
    assert "test-accuracy gap" in report or "accuracy gap closed" in report
    for name in ("val_loss.png", "accuracy.png", "spectra.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 1000
    (tmp_path / "cmp" / "report.md").unlink()
    assert main(["report", str(tmp_path / "cmp")]) == 0  # dispatches on task "images"
    assert "val accuracy (%)" in (tmp_path / "cmp" / "report.md").read_text()


def test_cli_train_images(tmp_path, capsys):
    code = main(["train", "images", "--dataset", "digits", "--hidden", "16", "--rank", "4",
                 "--epochs", "1", "--batch_size", "64", "--warmup_steps", "2",
                 "--iteration_interval", "5", "--method", "sst", "--no_progress",
                 "--output_dir", str(tmp_path / "cli")])
    assert code == 0
    assert "sst: test accuracy" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["settings"]["method"]["interval"] == 5


def test_cli_reports_missing_fashion_mnist(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SST_DATA_DIR", raising=False)
    code = main(["train", "images", "--data-dir", str(tmp_path), "--no_progress",
                 "--output_dir", str(tmp_path / "x")])
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err
