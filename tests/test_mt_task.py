"""The translation task end to end: training improves validation loss, BLEU, report, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from sparse_spectral.cli import main
from sparse_spectral.methods import make_method
from sparse_spectral.report.mt import bleu_gap_closed
from sparse_spectral.tasks.mt import (
    MT,
    MTSettings,
    corpus_bleu,
    evaluate_loss,
    mt_lr_lambda,
    prepare_data,
)
from sparse_spectral.training.checkpoint import latest_checkpoint
from sparse_spectral.training.runner import build_method, train_run


def run_train(settings, **kw):
    return train_run(MT, settings, **kw).summary


def converted_model(settings, data):
    """The untrained model of a run, converted by its method."""
    model = MT.build_model(settings, data)
    return build_method(MT, settings, model).prepare(model)

TINY = dict(vocab_size=400, train_pairs=600, eval_pairs=30, d_model=32, num_heads=2,
            num_layers=1, max_tokens=1024, num_training_steps=30, warmup_steps=5,
            eval_every=10, lr=3e-3, rank=4, beam_size=2, num_examples=3,
            method_options={"iteration_interval": 5})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))


def _settings(reference_data, tmp_path, **kw) -> MTSettings:
    return MTSettings.from_dict(TINY | {"data_dir": str(reference_data),
                                        "output_dir": str(tmp_path / "run")} | kw)


@pytest.mark.parametrize("method", ["full", "sst"])
def test_tiny_training_improves_validation_loss(method, reference_data, tmp_path):
    settings = _settings(reference_data, tmp_path, method=method)
    data = prepare_data(settings)
    untrained = converted_model(settings, data)
    before = evaluate_loss(untrained.eval(), data.splits["validation"], data.ids, 1024)["loss"]
    summary = run_train(settings, progress=False, data=data)
    curve = [p["val_loss"] for p in summary["curve"]]
    assert [p["step"] for p in summary["curve"]] == [10, 20, 30]
    assert summary["val_loss"] == pytest.approx(curve[-1])
    assert curve[-1] < curve[0] < before
    assert 0 <= summary["test_bleu"] <= 100
    assert summary["bleu_signature"].startswith("nrefs:1|case:mixed")
    assert len(summary["examples"]) == 3 and summary["examples"][0]["reference"] == \
        data.splits["test"].target_text[0]
    assert summary["target_tokens_per_s"] > 0 and summary["epoch_time_s"] > 0
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["final_step"] == 30
    assert latest_checkpoint(run).name == "step_000030"


# Smaller hyperbolic model and test set: its prefix-recomputing decoding costs more than the
# Euclidean model's cached one (beam search itself is checked in test_lorentz_transformer.py).
HYPER = dict(model="hyperbolic", d_model=16, num_heads=2, num_training_steps=20, eval_pairs=8)


def test_hyperbolic_training_improves_validation_loss_on_the_manifold(reference_data,
                                                                       tmp_path):
    """HyboNet's model: untied output table, Riemannian Adam on the three manifold tables."""
    from sparse_spectral.hyperbolic import (
        CombinedOptimizer,
        HyboNetRiemannianAdam,
        check_point,
        manifold_parameters,
    )
    from sparse_spectral.spectral import SlotAdamW
    from sparse_spectral.tasks.mt import optimizer_builder

    settings = _settings(reference_data, tmp_path, **HYPER)
    data = prepare_data(settings)
    untrained = converted_model(settings, data)
    before = evaluate_loss(untrained.eval(), data.splits["validation"], data.ids, 1024)["loss"]
    outcome = train_run(MT, settings, data=data, progress=False)
    summary, model, method = outcome.summary, outcome.model, outcome.method
    curve = [p["val_loss"] for p in summary["curve"]]
    assert curve[-1] < curve[0] < before
    assert summary["model"] == "hyperbolic" and 0 <= summary["test_bleu"] <= 100
    assert model.generator.weight is not model.decoder.embed.weight  # untied, as HyboNet
    tables = manifold_parameters(model)
    assert len(tables) == 3
    for table in tables:  # Riemannian steps keep every point on the hyperboloid
        assert float((check_point(table.detach()) / table.detach()[:, 0] ** 2).max()) < 1e-5
    optimizer = optimizer_builder(settings)(model, method, lr=1e-3, weight_decay=0.0)
    assert isinstance(optimizer, CombinedOptimizer)
    assert [type(o) for o in optimizer.optimizers] == [SlotAdamW, HyboNetRiemannianAdam]
    held = {id(p) for p in optimizer.optimizers[1].param_groups[0]["params"]}
    assert held == {id(p) for p in tables}
    assert optimizer_builder(_settings(reference_data, tmp_path)) is None  # Euclidean


def test_model_family_defaults_and_a_bad_model_value(reference_data, tmp_path, capsys):
    euclid, hyper = MTSettings(), MTSettings.from_dict(dict(model="hyperbolic"))
    assert (euclid.model_dropout, euclid.tied) == (0.1, True)
    assert (hyper.model_dropout, hyper.tied) == (0.0, False)  # HyboNet's IWSLT run
    assert MTSettings.from_dict(dict(model="hyperbolic", dropout=0.2, tie_embeddings=True)).tied
    with pytest.raises(ValueError, match=r"attention_dropout=0.2 is a setting of "
                                         r"model='hyperbolic' only"):
        MTSettings.from_dict(dict(attention_dropout=0.2))
    with pytest.raises(ValueError, match=r"riemannian='sgd' is unknown.*hybonet"):
        MTSettings.from_dict(dict(model="hyperbolic", riemannian="sgd"))
    out = tmp_path / "bad"
    assert main(["train", "mt", "--model", "poincare", "--data-dir", str(reference_data),
                 "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model='poincare' is unknown" in err and "'euclidean', 'hyperbolic'" in err
    assert not out.exists()


@pytest.mark.parametrize("family", ["euclidean", "hyperbolic"])
def test_resume_is_bit_exact(family, reference_data, tmp_path):
    """Dropout on: the step-keyed batches and the saved RNG make a resumed run identical.

    Hyperbolic: SST's SlotAdamW and the Riemannian Adam are restored through the
    CombinedOptimizer; the resumed part crosses the Riemannian Adam's re-projection (step 10)
    and an SST round (T3 = 5)."""
    common = dict(num_training_steps=12, eval_every=6, dropout=0.1, beam_size=1, eval_pairs=5)
    if family == "hyperbolic":
        common |= {k: v for k, v in HYPER.items() if k != "num_training_steps"}
    run_train(_settings(reference_data, tmp_path, output_dir=str(tmp_path / "a"), **common),
              progress=False)
    interrupted = _settings(reference_data, tmp_path, output_dir=str(tmp_path / "b"),
                            save_every=6, **common)
    run_train(interrupted, progress=False)
    root = tmp_path / "b" / "checkpoints"
    for f in (root / "step_000012").iterdir():
        f.unlink()
    (root / "step_000012").rmdir()
    (root / "latest").write_text("step_000006\n")
    run_train(interrupted, resume=True, progress=False)
    a = load_file(tmp_path / "a" / "checkpoints" / "step_000012" / "model.safetensors")
    b = load_file(root / "step_000012" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bleu_of_a_perfect_hypothesis_is_100(reference_data):
    from sparse_spectral.data.multi30k import load_multi30k

    refs = list(load_multi30k(reference_data)["test"].target)
    score, signature = corpus_bleu(refs, refs)
    assert score == pytest.approx(100.0)
    assert "tok:13a" in signature and "case:mixed" in signature
    clipped = [" ".join(r.split()[:-2]) for r in refs]  # drop the last two words
    assert 0 < corpus_bleu(clipped, refs)[0] < 100
    with pytest.raises(ValueError, match="999 hypotheses but 1000 references"):
        corpus_bleu(refs[:-1], refs)


def test_noam_schedule_and_the_methods_restart_factor():
    d, w, factor = 64, 40, 5.0
    settings = MTSettings.from_dict(dict(schedule="noam", lr=factor, d_model=d, warmup_steps=w))
    multiplier = mt_lr_lambda(make_method("full"), w)
    for s in (1, 10, 40, 41, 150):  # LambdaLR index t = s - 1
        noam = factor * d ** -0.5 * min(s ** -0.5, s * w ** -1.5)
        assert settings.peak_lr * multiplier(s - 1) == pytest.approx(noam)
    sst = make_method("sst", rank=4, iteration_interval=20, restart_warmup_steps=5,
                      stagger_resvd=False)
    rewarm, plain = mt_lr_lambda(sst, w), mt_lr_lambda(make_method("sst", rank=4), w)
    assert [rewarm(t) for t in range(20)] == [plain(t) for t in range(20)]
    assert [rewarm(t) / plain(t) for t in range(20, 26)] == pytest.approx(
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_bleu_gap_closed():
    def results(**bleu):
        return {"methods": {name: {"test_bleu": value} for name, value in bleu.items()}}

    assert bleu_gap_closed(results(full=30.0, lora=20.0, relora=18.0, sst=25.0)) == \
        pytest.approx(0.5)
    assert bleu_gap_closed(results(full=30.0, lora=20.0, sst=32.0)) == pytest.approx(1.2)
    assert bleu_gap_closed(results(full=20.0, lora=21.0, sst=25.0)) is None  # no gap
    assert bleu_gap_closed(results(full=30.0, sst=25.0)) is None
    assert bleu_gap_closed(results(full=30.0, lora=math.nan, sst=25.0)) is None


def test_compare_from_the_cli_writes_the_report(reference_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "mt", "--data-dir", str(reference_data), "--output_dir", str(out),
            "--methods", "full,lora,sst", "--method_lr", "sst=5e-3", "--no_progress",
            "--iteration_interval", "5"]
    for key in ("vocab_size", "train_pairs", "eval_pairs", "d_model", "num_heads",
                "num_layers", "max_tokens", "warmup_steps", "rank", "beam_size",
                "num_examples"):
        args += [f"--{key}", str(TINY[key])]
    args += ["--num_training_steps", "10", "--eval_every", "5"]
    assert main(args) == 0
    for name in ("results.json", "report.md", "val_loss.png", "spectra.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "mt" and list(results["methods"]) == ["full", "lora", "sst"]
    assert results["methods"]["sst"]["lr"] == 5e-3
    assert results["methods"]["sst"]["trainable_params"] < \
        results["methods"]["full"]["trainable_params"]
    report = (out / "report.md").read_text()
    assert "| test BLEU |" in report and all(f"| {m} |" in report for m in ("full", "lora", "sst"))
    assert "BLEU gap" in report and results["methods"]["sst"]["bleu_signature"] in report
    assert report.count("### Example") == 3 and "- SST: " in report
    (out / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0  # re-rendered from results.json
    assert (out / "report.md").read_text() == report


def test_missing_data_and_bad_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SST_DATA_DIR", raising=False)
    assert main(["train", "mt", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"model='transformer' is unknown.*euclidean"):
        MTSettings.from_dict(dict(model="transformer"))
    with pytest.raises(ValueError, match="epochs=0"):
        MTSettings.from_dict(dict(epochs=0))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['block_size'\]"):
        MTSettings.from_dict({"block_size": 3})
