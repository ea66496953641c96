"""The LM comparison report (sparse_spectral.report.lm): the gap closed, the table, the plots."""

from __future__ import annotations

import copy
import json
import math
import struct
import subprocess
import sys

import pytest

from sparse_spectral.report.lm import (
    gap_closed,
    load_lm_results,
    paper_sentence,
    render_lm_report,
    results_table,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# SPEC section 8, the paper's OPT-125M row (r = 64).
OPT_125M = {"full": 23.50, "lora": 34.23, "relora": 35.80, "sst": 26.98}
OPT_125M_GAP = (34.23 - 26.98) / (34.23 - 23.50)  # 0.6757


def ppl_results(**ppl) -> dict:
    return {"methods": {name: {"val_ppl": value} for name, value in ppl.items()}}


def method_entry(i: int, val_ppl: float, pruning: bool = False) -> dict:
    """One method's results with values derived from ``i``."""
    return {
        "trainable_params": 1000 * (i + 1), "total_params": 10_000,
        "grad_optimizer_bytes": (i + 1) * 2**20, "step_time_s": 0.01 * (i + 1),
        "val_loss": math.log(val_ppl), "val_ppl": val_ppl,
        "test_ppl": None if i == 1 else val_ppl + 1.0,
        "curve": [{"step": s, "val_loss": 5.0 - s / 100 - i / 10, "train_loss": None}
                  for s in (10, 50, 100)],
        "spectra": {f"layers.{j}.fc": [4.0 / (k + 1 + i) for k in range(16)] for j in (0, 1)},
        "pruning": ([{"ratio": r / 10, "ppl": val_ppl * (1 + r)} for r in range(5)]
                    if pruning else None),
    }


@pytest.fixture
def results() -> dict:
    methods = {name: method_entry(i, ppl, pruning=name in ("full", "sst"))
               for i, (name, ppl) in enumerate(OPT_125M.items())}
    methods["galore"] = method_entry(4, float("nan"))  # a diverged run
    return {"task": "lm", "title": "opt_micro on shakespeare, rank 8",
            "settings": {"model": "opt_micro", "rank": 8, "method_options": {"lam": 1.0}},
            "methods": methods}


def write(tmp_path, results) -> None:
    (tmp_path / "results.json").write_text(json.dumps(results))


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------
# gap_closed
# --------------------------------------------------------------------------


def test_gap_closed_matches_the_paper_opt_125m_row():
    assert gap_closed(ppl_results(**OPT_125M)) == pytest.approx(0.676, abs=1e-3)
    assert gap_closed(ppl_results(**OPT_125M)) == pytest.approx(OPT_125M_GAP)


@pytest.mark.parametrize("full, lora, relora, sst, share", [
    (21.78, 34.26, 39.21, 27.72, 0.524),  # OPT-350M
    (20.04, 29.71, 31.33, 23.35, 0.658),  # LLaMA-130M
    (14.54, 16.50, 17.32, 14.59, 0.974),  # LLaMA-1.3B
])
def test_gap_closed_other_paper_rows(full, lora, relora, sst, share):
    assert gap_closed(ppl_results(full=full, lora=lora, relora=relora, sst=sst)) == \
        pytest.approx(share, abs=1e-3)


def test_best_baseline_is_the_lowest_present_one():
    # galore is best here, so the gap is measured from it.
    got = gap_closed(ppl_results(full=10.0, lora=30.0, galore=20.0, sst=15.0))
    assert got == pytest.approx(0.5)


@pytest.mark.parametrize("ppl", [
    {"lora": 34.23, "sst": 26.98},                          # no full
    {"full": 23.5, "lora": 34.23},                          # no sst
    {"full": 23.5, "sst": 26.98},                           # no baseline
    {"full": 23.5, "lora": 23.5, "sst": 22.0},              # baseline not worse: no gap
    {"full": 23.5, "lora": 20.0, "sst": 22.0},
    {"full": 23.5, "lora": float("nan"), "sst": 22.0},      # diverged baseline only
    {"full": 23.5, "lora": 34.23, "sst": float("inf")},     # diverged SST
])
def test_gap_closed_none_cases(ppl):
    assert gap_closed(ppl_results(**ppl)) is None


def test_gap_closed_ignores_a_diverged_baseline(results):
    assert gap_closed(results) == pytest.approx(OPT_125M_GAP)


@pytest.mark.parametrize("ppl, words", [
    # LLaMA-130M's own row: as much as the paper
    ({"full": 20.04, "lora": 29.71, "relora": 31.33, "sst": 23.35},
     "closes 65.8% of the gap between LoRA and full rank here, as much as the paper"),
    # 60%: within 5.8 points of 65.8%
    ({"full": 10.0, "lora": 20.0, "relora": 30.0, "sst": 14.0}, "here, within 5.8 points of"),
    # 50%: 15.8 points short of 65.8%
    ({"full": 10.0, "lora": 20.0, "relora": 30.0, "sst": 15.0}, "here, 15.8 points short"),
    # worse than ReLoRA*, the better of the two: contradicts
    ({"full": 10.0, "lora": 30.0, "relora": 20.0, "sst": 21.0},
     "worse than ReLoRA* here, which contradicts"),
])
def test_paper_sentence_reads_the_share_against_lora_and_relora(ppl, words):
    sentence = paper_sentence(ppl_results(**ppl))
    assert words in sentence and "65.8% of the gap between the better of LoRA and ReLoRA* and " \
        "full rank at LLaMA-130M; 67.6% at OPT-125M, 97.4% at LLaMA-1.3B" in sentence


def test_paper_sentence_ignores_galore_and_apollo():
    # GaLore is the best baseline overall (SST closes 0% of that gap), not in the paper's set.
    ppl = {"full": 10.0, "lora": 20.0, "relora": 30.0, "galore": 15.0, "sst": 15.0}
    assert gap_closed(ppl_results(**ppl)) == pytest.approx(0.0)
    assert "closes 50.0% of the gap between LoRA" in paper_sentence(ppl_results(**ppl))


@pytest.mark.parametrize("ppl, words", [
    ({"full": 10.0, "galore": 20.0, "sst": 15.0}, "needs LoRA or ReLoRA*; this run has neither"),
    ({"full": 10.0, "lora": 9.0, "sst": 15.0},
     "full rank (10.00) is not ahead of LoRA (9.00) here"),
    ({"full": 10.0, "lora": 20.0}, "no finite SST"),
    ({"full": 10.0, "lora": float("nan"), "sst": 12.0}, "no finite LoRA"),
])
def test_paper_sentence_says_why_it_is_not_computed(ppl, words):
    assert words in paper_sentence(ppl_results(**ppl))


# --------------------------------------------------------------------------
# render_lm_report
# --------------------------------------------------------------------------


def test_render_report_writes_all_four_files(tmp_path, results):
    write(tmp_path, results)
    written = render_lm_report(tmp_path)
    assert set(written) == {"report", "val_loss", "spectra", "pruning"}
    assert {p.name for p in written.values()} == {
        "report.md", "val_loss.png", "spectra.png", "pruning.png"}
    for key in ("val_loss", "spectra", "pruning"):
        width, height = png_size(written[key])
        assert width > 100 and height > 100
        assert written[key].stat().st_size > 5_000  # a real plot, not an empty canvas
    # Nothing else left behind: no temporary files.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["results.json", "report.md", "val_loss.png", "spectra.png", "pruning.png"])


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not cells[0] == "method":
            rows[cells[0]] = cells[1:]
    return rows


def test_markdown_table_has_a_row_per_method_with_the_numbers(tmp_path, results):
    write(tmp_path, results)
    text = render_lm_report(tmp_path)["report"].read_text()
    rows = table_rows(text)
    assert list(rows) == ["full", "lora", "relora", "galore", "sst"]  # canonical order
    assert rows["full"] == ["1,000", "10.0%", "1.00", "10.0", "23.50", "24.50"]
    assert rows["lora"] == ["2,000", "20.0%", "2.00", "20.0", "34.23", "-"]
    assert rows["sst"] == ["4,000", "40.0%", "4.00", "40.0", "26.98", "27.98"]
    assert rows["galore"][4] == "nan"
    assert text.startswith("# opt_micro on shakespeare, rank 8\n")
    assert "- **rank**: 8" in text and '- **method_options**: {"lam": 1.0}' in text
    assert "SST closes 67.6% of the validation-perplexity gap" in text
    assert "(LoRA, 34.23)" in text
    for png in ("val_loss.png", "spectra.png", "pruning.png"):
        assert f"]({png})" in text


def test_report_explains_a_missing_gap(tmp_path, results):
    del results["methods"]["full"]
    write(tmp_path, results)
    text = render_lm_report(tmp_path)["report"].read_text()
    assert "not computed; no finite validation perplexity for full rank" in text


def test_report_explains_no_gap(tmp_path, results):
    results["methods"]["lora"]["val_ppl"] = 20.0
    write(tmp_path, results)
    text = render_lm_report(tmp_path)["report"].read_text()
    assert "is not worse than full rank" in text


def test_plots_without_data_still_render(tmp_path, results):
    for entry in results["methods"].values():
        entry["curve"], entry["pruning"] = [], None
        entry.pop("spectra")
    write(tmp_path, results)
    written = render_lm_report(tmp_path)
    for key in ("val_loss", "spectra", "pruning"):
        png_size(written[key])


def test_rerender_overwrites_in_place(tmp_path, results):
    write(tmp_path, results)
    render_lm_report(tmp_path)
    results["methods"]["sst"]["val_ppl"] = 25.0
    write(tmp_path, results)
    text = render_lm_report(tmp_path)["report"].read_text()
    assert table_rows(text)["sst"][4] == "25.00"
    assert len(list(tmp_path.iterdir())) == 5


def test_results_table_alone(results):
    lines = results_table(results).splitlines()
    assert lines[0].startswith("| method | trainable params | share |")
    assert len(lines) == 2 + len(results["methods"])


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_missing_results_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "results.json")):
        render_lm_report(tmp_path)


def test_invalid_json_names_the_path(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        render_lm_report(tmp_path)


@pytest.mark.parametrize("mutate, text", [
    (lambda r: r.pop("methods"), "the top level is missing key 'methods'"),
    (lambda r: r.pop("title"), "the top level is missing key 'title'"),
    (lambda r: r.update(methods={}), "'methods' must be a non-empty object"),
    (lambda r: r["methods"]["sst"].pop("val_ppl"),
     r"methods\['sst'\] is missing key 'val_ppl'"),
    (lambda r: r["methods"]["lora"].update(step_time_s="fast"),
     r"methods\['lora'\]\['step_time_s'\] must be a number"),
    (lambda r: r["methods"]["full"]["curve"][1].pop("step"),
     r"methods\['full'\]\['curve'\]\[1\] is missing key 'step'"),
    (lambda r: r["methods"]["full"].update(pruning=[{"ratio": 0.1}]),
     r"methods\['full'\]\['pruning'\]\[0\] is missing key 'ppl'"),
    (lambda r: r["methods"]["sst"]["spectra"].update(bad="x"),
     r"methods\['sst'\]\['spectra'\]\['bad'\] must be a list of numbers"),
    (lambda r: r["methods"]["sst"].update(test_ppl="n/a"), "test_ppl"),
])
def test_schema_errors_name_path_and_key(tmp_path, results, mutate, text):
    bad = copy.deepcopy(results)
    mutate(bad)
    write(tmp_path, bad)
    with pytest.raises(ValueError, match=text) as info:
        load_lm_results(tmp_path)
    assert str(tmp_path / "results.json") in str(info.value)
    # A failed render writes nothing.
    with pytest.raises(ValueError):
        render_lm_report(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_importing_report_does_not_import_matplotlib():
    code = ("import sys, sparse_spectral.report; "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_accepts_what_the_lm_task_writes(tmp_path, results):
    # run_compare adds bookkeeping keys, omits train_loss and writes with sort_keys=True.
    for name, entry in results["methods"].items():
        entry.update(method=name, wall_time_s=1.5, final_step=100, lr=1e-3)
        for point in entry["curve"]:
            point.pop("train_loss")
    (tmp_path / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    rows = table_rows(render_lm_report(tmp_path)["report"].read_text())
    assert list(rows) == ["full", "lora", "relora", "galore", "sst"]
