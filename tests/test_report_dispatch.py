"""sparse_spectral.report.render: which report a folder gets, its errors, the import rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from report_examples import (
    ablation_data,
    graph_results,
    images_results,
    lm_results,
    mt_results,
    write_json,
)

import sparse_spectral.report as report_package
from sparse_spectral.cli import main
from sparse_spectral.report import render

PACKAGE_DIR = Path(report_package.__file__).parent


def write_run(folder: Path) -> Path:
    write_json(folder / "summary.json", {"method": "sst", "val_loss": 1.5,
                                         "trainable_params": 10, "total_params": 20})
    (folder / "metrics.jsonl").write_text(
        '{"step": 1, "train_loss": 2.0}\n{"step": 2, "val_loss": 1.5}\n')
    return folder


@pytest.mark.parametrize("kind, data, files", [
    ("lm", lm_results({"full": 20.0, "lora": 30.0, "sst": 25.0}),
     {"report.md", "val_loss.png", "spectra.png", "pruning.png"}),
    ("mt", mt_results({"full": 30.0, "lora": 20.0, "sst": 25.0}),
     {"report.md", "val_loss.png", "spectra.png"}),
    ("graph", graph_results("lp", {"full": 0.9, "lora": 0.7, "sst": 0.8}),
     {"report.md", "val_curves.png", "embeddings.png"}),
    ("images", images_results({"full": 0.9, "lora": 0.7, "sst": 0.8}),
     {"report.md", "val_loss.png", "accuracy.png", "spectra.png"}),
])
def test_results_json_dispatches_on_task(tmp_path, kind, data, files):
    write_json(tmp_path / "results.json", data)
    written = render(tmp_path)
    assert {path.name for path in written.values()} == files
    assert all(path.parent == tmp_path and path.is_file() for path in written.values())
    text = (tmp_path / "report.md").read_text()
    # Each task's own table header: the right module rendered it.
    header = {"lm": "| val ppl | test ppl |", "mt": "| test BLEU |",
              "graph": "| test ROC-AUC | test AP |", "images": "| test accuracy (%) |"}[kind]
    assert header in text


def test_ablation_json_gets_the_ablation_report(tmp_path):
    write_json(tmp_path / "ablation.json", ablation_data())
    written = render(tmp_path)
    assert {p.name for p in written.values()} == {"ablation.md", "ablation.png",
                                                 "grad_norm.png"}
    assert "# SST ablation on images" in (tmp_path / "ablation.md").read_text()


def test_run_folder_gets_the_run_report(tmp_path):
    written = render(write_run(tmp_path))
    assert {p.name for p in written.values()} == {"report.md", "val_loss.png",
                                                 "train_loss.png"}
    assert (tmp_path / "report.md").read_text().startswith("# Training run: sst\n")


def test_results_json_wins_over_a_run_folder(tmp_path):
    write_run(tmp_path)
    write_json(tmp_path / "results.json", lm_results({"full": 20.0, "sst": 25.0}))
    assert "pruning" in render(tmp_path)


def test_unknown_task_names_the_file_and_the_tasks(tmp_path):
    write_json(tmp_path / "results.json", {**lm_results({"full": 1.0}), "task": "speech"})
    with pytest.raises(ValueError) as info:
        render(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "results.json") in message and "'speech'" in message
    assert "lm, mt, graph, images" in message
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # nothing written


@pytest.mark.parametrize("setup, start", [
    (lambda folder: None, "nothing to report"),
    # Half a run folder (the run stopped before its summary) is not a run folder.
    (lambda folder: (folder / "metrics.jsonl").write_text(""), "nothing to report"),
])
def test_folder_without_results_names_what_was_looked_for(tmp_path, setup, start):
    setup(tmp_path)
    with pytest.raises(ValueError) as info:
        render(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: {start}")
    for looked_for in ("results.json", "ablation.json", "summary.json", "metrics.jsonl",
                       "lm, mt, graph, images"):
        assert looked_for in message


def test_missing_folder_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such folder; looked for results.json"):
        render(tmp_path / "absent")


def test_cli_report_prints_the_error_without_a_traceback(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sst: error: {tmp_path}: nothing to report; looked for")
    assert "Traceback" not in err


def test_cli_report_renders_a_run_folder(tmp_path, capsys):
    assert main(["report", str(write_run(tmp_path))]) == 0
    assert str(tmp_path / "report.md") in capsys.readouterr().out


def test_invalid_results_json_names_the_file(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        render(tmp_path)


# --------------------------------------------------------------------------
# The package reads result files only
# --------------------------------------------------------------------------


def imported_modules(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative ones resolved)."""
    package = ["sparse_spectral", "report"]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) + 1 - node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # "from . import x" may import a submodule x: count it as one.
            names += [module] if node.module else [f"{module}.{a.name}" for a in node.names]
    return names


def test_imported_modules_resolves_relative_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from .. import tasks\nfrom ..training import loop\nfrom .common import x\n"
                     "import numpy\n")
    assert imported_modules(probe) == ["sparse_spectral.tasks", "sparse_spectral.training",
                                       "sparse_spectral.report.common", "numpy"]


def test_report_package_imports_no_other_sparse_spectral_module():
    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "common.py", "lm.py", "mt.py",
                                       "graph.py", "images.py", "ablation.py", "run.py"}
    for path in files:
        for name in imported_modules(path):
            if name.split(".")[0] != "sparse_spectral":
                continue
            allowed = name.startswith(("sparse_spectral.report", "sparse_spectral._util"))
            assert allowed, f"{path.name} imports {name}"

