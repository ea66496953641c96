"""The language-model task end to end: `sst train lm` per method, exact resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_helpers import compare_and_render, shakespeare_excerpt, train_summary
from safetensors.torch import load_file

import sparse_spectral.tasks.lm as lm
from sparse_spectral.cli import main
from sparse_spectral.tasks.lm import LM, LMSettings
from sparse_spectral.training.checkpoint import latest_checkpoint


def run_train(settings, **kw):
    return train_summary(LM, settings, **kw)


def run_compare(settings, methods, method_lr, progress=True):
    return compare_and_render(LM, settings, methods, method_lr, progress=progress)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return shakespeare_excerpt(tmp_path_factory, 40000)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))


def _settings(corpus_file, tmp_path, **kw) -> LMSettings:
    values = dict(text=str(corpus_file), model="gpt_micro", rank=4, block_size=16, batch_size=4,
                  num_training_steps=6, warmup_steps=2, eval_every=3, eval_tokens=512,
                  output_dir=str(tmp_path / "run"), method_options={"iteration_interval": 2})
    return LMSettings.from_dict(values | kw)


@pytest.mark.parametrize("method", ["full", "lora", "relora", "galore", "sst"])
def test_train_each_method(method, corpus_file, tmp_path):
    summary = run_train(_settings(corpus_file, tmp_path, method=method), progress=False)
    assert torch.isfinite(torch.tensor(summary["val_ppl"])) and summary["val_ppl"] > 1
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records if "val_loss" in r} == {3, 6}
    assert any("tokens_per_s" in r for r in records)
    assert json.loads((run / "summary.json").read_text())["final_step"] == 6
    assert latest_checkpoint(run).name == "step_000006"


def test_resume_is_bit_exact(corpus_file, tmp_path):
    straight = _settings(corpus_file, tmp_path, output_dir=str(tmp_path / "a"),
                         num_training_steps=8)
    run_train(straight, progress=False)
    interrupted = _settings(corpus_file, tmp_path, output_dir=str(tmp_path / "b"),
                            num_training_steps=8, save_every=4)
    run_train(interrupted, progress=False)
    # Pretend the run died after its step-4 checkpoint: drop later state, then resume.
    root = tmp_path / "b" / "checkpoints"
    for path in root.glob("step_000008"):
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    (root / "latest").write_text("step_000004\n")
    run_train(interrupted, resume=True, progress=False)
    a = load_file(tmp_path / "a" / "checkpoints" / "step_000008" / "model.safetensors")
    b = load_file(root / "step_000008" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text()
             .splitlines()]
    assert steps == sorted(steps)  # the log was trimmed to the checkpoint, then continued


def test_resume_without_checkpoint_is_an_error(corpus_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_train(_settings(corpus_file, tmp_path), resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus_file, tmp_path,
                                                              monkeypatch):
    real = lm.lm_loss
    calls = {"n": 0}

    def exploding(model, x, y):
        calls["n"] += 1
        loss = real(model, x, y)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(lm, "lm_loss", exploding)
    from sparse_spectral.training.loop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"step 5.*step_000004"):
        run_train(_settings(corpus_file, tmp_path, save_every=2), progress=False)
    run = tmp_path / "run"
    assert latest_checkpoint(run).name == "step_000004"
    assert not (run / "summary.json").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_compare_writes_results_and_report(corpus_file, tmp_path):
    settings = _settings(corpus_file, tmp_path, output_dir=str(tmp_path / "cmp"))
    results = run_compare(settings, ["full", "lora", "sst"], {"sst": 3e-3}, progress=False)
    out = tmp_path / "cmp"
    for name in ("results.json", "report.md", "val_loss.png", "spectra.png", "pruning.png"):
        assert (out / name).is_file(), name
    assert results["methods"]["sst"]["lr"] == 3e-3
    assert [p["ratio"] for p in results["methods"]["sst"]["pruning"]] == list(lm.PRUNING_RATIOS)
    assert results["methods"]["lora"]["pruning"] is None
    report = (out / "report.md").read_text()
    assert all(f"| {m} |" in report for m in ("full", "lora", "sst"))


def test_compare_over_seeds_reports_mean_and_std(corpus_file, tmp_path):
    settings = _settings(corpus_file, tmp_path, output_dir=str(tmp_path / "seeds"),
                         num_training_steps=4)
    results = compare_and_render(LM, settings, ["full", "sst"], seeds=[0, 1])
    for name in ("full", "sst"):
        entry = results["methods"][name]
        per_seed = [s["val_ppl"] for s in entry["seeds"]]
        assert [s["seed"] for s in entry["seeds"]] == [0, 1] and per_seed[0] != per_seed[1]
        assert entry["val_ppl"] == pytest.approx(sum(per_seed) / 2)
        assert entry["val_ppl_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
        assert (tmp_path / "seeds" / name / "seed_1" / "summary.json").is_file()
    row = next(x for x in (tmp_path / "seeds" / "report.md").read_text().splitlines()
               if x.startswith("| sst |"))
    assert f"{results['methods']['sst']['val_ppl']:.2f} ± " in row


def _cli(corpus_file, tmp_path, *extra):
    return main(["train", "lm", "--text", str(corpus_file), "--model", "gpt_micro",
                 "--block_size", "16", "--batch_size", "4", "--num_training_steps", "2",
                 "--warmup_steps", "1", "--eval_every", "2", "--eval_tokens", "256",
                 "--output_dir", str(tmp_path / "cli"), "--no_progress", *extra])


def test_cli_config_file_and_overrides(corpus_file, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('method = "lora"\nrank = 3\nlr = 0.002\n')
    with pytest.warns(FutureWarning, match="deprecated"):  # flat keys: the old layout
        assert _cli(corpus_file, tmp_path, "--config", str(config), "--rank", "2") == 0
    state = torch.load(latest_checkpoint(tmp_path / "cli") / "state.pt", weights_only=True)
    assert state["settings"]["method"]["name"] == "lora"
    assert state["settings"]["method"]["rank"] == 2  # the flag wins over the file
    assert state["settings"]["optim"]["lr"] == 0.002
    assert "lora: val ppl" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--model", "gpt_huge"], "unknown model preset 'gpt_huge'; available:"),
    (["--method", "lorra"], r"unknown method\(s\) \['lorra'\]"),
    (["--method", "sst", "--rank", "64"], r"rank=64 is out of range for layer"),
    (["--tokenizer", "words"], "words"),
])
def test_cli_bad_input(corpus_file, tmp_path, capsys, extra, message):
    import re

    assert _cli(corpus_file, tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "cli" / "summary.json").exists()


def test_cli_unreadable_text_and_too_small_corpus(tmp_path, capsys):
    assert main(["train", "lm", "--text", str(tmp_path / "missing.txt"), "--no_progress",
                 "--output_dir", str(tmp_path / "x")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be, that is the question.\n" * 3)
    assert main(["train", "lm", "--text", str(small), "--model", "gpt_micro", "--block_size",
                 "64", "--no_progress", "--output_dir", str(tmp_path / "y")]) == 2
    assert "fewer than one block" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_example_config_parses():
    """The main job's config file maps onto settings, methods and learning rates."""
    from sparse_spectral.cli import build_parser
    from sparse_spectral.cli.commands import lr_table
    from sparse_spectral.cli.flags import settings_from_args

    config = Path(__file__).resolve().parents[1] / "examples" / "lm_compare_cpu.toml"
    args = build_parser().parse_args(["compare", "lm", "--config", str(config),
                                      "--num_training_steps", "7"])
    settings, extras, _ = settings_from_args(args, LMSettings)
    assert settings.schedule.num_training_steps == 7 and settings.model == "llama_replica"
    assert (settings.tokenizer, settings.vocab_size, settings.method.rank) == ("bpe", 1344, 8)
    assert settings.method.options["singular_value_lr_scale"] == 3.0
    methods = ["full", "lora", "relora", "galore", "apollo", "apollo_mini", "sst"]
    assert extras["methods"] == ",".join(methods)
    assert set(lr_table(extras["method_lr"])) == set(methods)


def test_bad_schedule_fails_before_writing_anything(corpus_file, tmp_path):
    with pytest.raises(ValueError, match="warmup_steps=50 must be <= num_training_steps=6"):
        run_train(_settings(corpus_file, tmp_path, warmup_steps=50), progress=False)
    assert not (tmp_path / "run").exists()
