"""The image-classification report: its own metrics, with or without the old ``val_ppl``."""

from __future__ import annotations

import pytest
from report_examples import images_results, write_json

from sparse_spectral.report import accuracy_gap_closed, render
from sparse_spectral.report.images import load_images_results

ACCURACY = {"full": 0.9, "lora": 0.7, "sst": 0.8}


def rows(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "method":
            out[cells[0]] = cells[1:]
    return out


def test_renders_without_val_ppl(tmp_path):
    results = images_results(ACCURACY)
    assert all("val_ppl" not in entry for entry in results["methods"].values())
    write_json(tmp_path / "results.json", results)
    written = render(tmp_path)
    assert {p.name for p in written.values()} == {"report.md", "val_loss.png", "accuracy.png",
                                                 "spectra.png"}
    text = written["report"].read_text()
    # val loss, val accuracy (%), test accuracy (%) from the entries' own metrics.
    assert rows(text)["lora"][-3:] == ["0.6000", "70.00", "70.00"]
    assert ("SST closes 50.0% of the test-accuracy gap between the best other low-rank "
            "method (LoRA, 70.00%) and full rank (90.00%)") in text
    assert "ppl" not in text


def test_old_files_with_val_ppl_render_the_same(tmp_path):
    write_json(tmp_path / "new" / "results.json", images_results(ACCURACY))
    write_json(tmp_path / "old" / "results.json", images_results(ACCURACY, val_ppl=True))
    render(tmp_path / "new")
    render(tmp_path / "old")
    assert (tmp_path / "old" / "report.md").read_text() == \
        (tmp_path / "new" / "report.md").read_text()


@pytest.mark.parametrize("key", ["val_accuracy", "test_accuracy", "val_loss"])
def test_its_own_metrics_are_required(tmp_path, key):
    results = images_results(ACCURACY)
    del results["methods"]["sst"][key]
    write_json(tmp_path / "results.json", results)
    with pytest.raises(ValueError, match=rf"methods\['sst'\] is missing key '{key}'"):
        load_images_results(tmp_path)


def test_accuracy_gap_closed_and_a_loss_headline(tmp_path):
    results = images_results(ACCURACY)
    assert accuracy_gap_closed(results) == pytest.approx(0.5)
    for name, loss in {"full": 0.2, "lora": 0.6, "sst": 0.3}.items():
        results["methods"][name]["test_loss"] = loss
    results["headline"] = {"key": "test_loss", "label": "test loss", "higher_is_better": False}
    assert accuracy_gap_closed(results) == pytest.approx(0.75)
    write_json(tmp_path / "results.json", results)
    text = render(tmp_path)["report"].read_text()
    # A loss is not a percentage.
    assert ("SST closes 75.0% of the test-loss gap between the best other low-rank method "
            "(LoRA, 0.6000) and full rank (0.2000)") in text
