"""DDP (and FSDP2 for translation) of the tasks without fixed rows: translation
(token-budget batches) and graphs (full-batch training), 2 spawned gloo ranks against one
process.

One launch trains every case on both ranks; each rank reports through a file in
``tmp_path``. The cases run SST with selections changing every 2 steps and re-SVDs, so the
ranks must also stay bitwise identical through those.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dist_helpers import raised_errors, run_distributed

from sparse_spectral.data.mt_batching import sentence_share
from sparse_spectral.models.hybonet import hinge_loss, margin_loss
from sparse_spectral.tasks.graph import GRAPH, GraphSettings
from sparse_spectral.tasks.mt import MT, MTSettings
from sparse_spectral.training.checkpoint import latest_checkpoint, read_checkpoint_state
from sparse_spectral.training.runner import train_run

SST = {"iteration_interval": 2, "iterations_per_round": 2}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))  # spawned ranks inherit it


def _mt(data_dir: str, out: str, **kw) -> MTSettings:
    """A 1-layer Transformer, 6 steps of 2 token-budget micro-batches, dropout off (the
    ranks draw the same masks on different sentences, which one process cannot match)."""
    values = dict(vocab_size=300, train_pairs=400, eval_pairs=20, d_model=32, num_heads=2,
                  num_layers=1, max_tokens=600, grad_accumulation=2, num_training_steps=6,
                  warmup_steps=2, eval_every=3, lr=3e-3, rank=4, beam_size=1,
                  num_examples=1, dropout=0.0, method="sst", method_options=SST,
                  save_every=3, log_every=1, data_dir=data_dir, output_dir=out)
    return MTSettings.from_dict(values | kw)


def _graph(data_dir: str, out: str, dataset: str, task: str, **kw) -> GraphSettings:
    """8 full-batch epochs of SST; HyboNet's dropout stays on (every rank encodes the whole
    graph with the same masks, so one process can match it)."""
    values = dict(dataset=dataset, task=task, data_dir=data_dir, epochs=8, min_epochs=0,
                  patience=100, lr=0.05, rank=2, save_embeddings=False, method="sst",
                  method_options=SST, save_every=4, output_dir=out)
    if task == "nc":
        values["num_layers"] = 3
    return GraphSettings.from_dict(values | kw)


class _NoDropoutMT(type(MT)):
    """The mt task with every dropout off, the Lorentz model's fixed positional one too."""

    def build_model(self, settings, data):
        model = super().build_model(settings, data)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model


def _cases(data_dir: str, tmp: Path) -> dict:
    return {
        "mt_euclidean": (MT, _mt(data_dir, str(tmp / "mt_euclidean"))),
        "mt_hyperbolic": (_NoDropoutMT(), _mt(data_dir, str(tmp / "mt_hyperbolic"),
                                              model="hyperbolic", attention_dropout=0.0)),
        "graph_nc": (GRAPH, _graph(data_dir, str(tmp / "graph_nc"), "airport", "nc")),
        "graph_lp": (GRAPH, _graph(data_dir, str(tmp / "graph_lp"), "disease", "lp")),
    }


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _report(outcome) -> dict:
    """The trained state, the weights it composes (``W = U diag(s) Vh`` of every converted
    layer, every other parameter as it is) and the summary."""
    from sparse_spectral.spectral.layer import SpectralLinear

    weights = {}
    for name, module in outcome.model.named_modules():
        if isinstance(module, SpectralLinear):
            weights[f"{name}.weight"] = module.weight.detach().clone()
    for name, param in outcome.model.named_parameters():
        if not any(name.startswith(layer[:-len("weight")]) for layer in weights):
            weights[name] = param.detach().clone()
    return {"state": _state(outcome.model), "summary": outcome.summary, "merged": weights}


def _train_lines(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "train_loss" in r]


def _job(rank: int, world_size: int, data_dir: str, tmp: str) -> None:
    tmp = Path(tmp) / "ddp"
    report = {}
    for name, (task, settings) in _cases(data_dir, tmp).items():
        report[name] = _report(train_run(task, settings, progress=False))
    # Resume translation from its step-3 checkpoint: the same run.
    if rank == 0:
        run = tmp / "mt_euclidean"
        shutil.copytree(run, tmp / "mt_resumed")
        shutil.rmtree(tmp / "mt_resumed" / "checkpoints" / "step_000006")
        (tmp / "mt_resumed" / "checkpoints" / "latest").write_text("step_000003\n")
    torch.distributed.barrier()
    resumed = train_run(MT, _mt(data_dir, str(tmp / "mt_resumed")), resume=True,
                        progress=False)
    report["mt_resumed"] = _state(resumed.model)
    # FSDP2 shards the Euclidean translation model (decoding included).
    fsdp = train_run(MT, _mt(data_dir, str(tmp / "mt_fsdp2"), parallel="fsdp2"), progress=False)
    report["mt_fsdp2"] = fsdp.summary
    report["errors"] = raised_errors({
        # 150 padded tokens a side: the longest pairs go one to a batch, not one per rank.
        "one_sentence": lambda: train_run(MT, _mt(data_dir, str(tmp / "tiny"), max_tokens=150),
                                          progress=False),
        "hyperbolic_fsdp2": lambda: train_run(MT, _mt(data_dir, str(tmp / "fsdp"),
                                                      model="hyperbolic", parallel="fsdp2"),
                                              progress=False),
        "graph_fsdp2": lambda: train_run(GRAPH, _graph(data_dir, str(tmp / "fsdp"), "disease",
                                                       "lp", parallel="fsdp2"),
                                         progress=False)})
    torch.save(report, Path(tmp).parent / f"rank{rank}.pt")


def test_translation_and_graphs_two_ranks_match_one_process(reference_data, tmp_path):
    torch.set_num_threads(1)  # as the ranks: the re-SVDs then compute the same bits
    single = {}
    for name, (task, settings) in _cases(str(reference_data), tmp_path / "one").items():
        single[name] = _report(train_run(task, settings, progress=False))

    run_distributed(_job, 2, tmp_path, str(reference_data), str(tmp_path), timeout=600)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    for name, ref in single.items():
        a, b = ranks[0][name], ranks[1][name]
        for key in a["state"]:  # bitwise one model on both ranks, through swaps and re-SVDs
            assert torch.equal(a["state"][key], b["state"][key]), (name, key)
        # ... and one process's run. The first step's loss is the same to rounding (the
        # ranks' weighted shares make the whole batch's mean), the later ones close.
        one_lines = _train_lines(tmp_path / "one" / name)
        ddp_lines = _train_lines(tmp_path / "ddp" / name)
        assert [r["step"] for r in ddp_lines] == [r["step"] for r in one_lines]
        assert ddp_lines[0]["train_loss"] == pytest.approx(one_lines[0]["train_loss"], rel=1e-6)
        # The Lorentz models' losses drift further (their selections may move, below);
        # measured 1.2e-4 and 1.4e-4 apart on an AVX-512 EPYC.
        rel = 1e-4 if name == "mt_euclidean" else 1e-3
        for got, want in zip(ddp_lines, one_lines, strict=True):
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=rel), name
        state = read_checkpoint_state(latest_checkpoint(tmp_path / "ddp" / name))
        assert state["environment"]["world_size"] == 2
        if name == "mt_hyperbolic":
            # Some of its singular values get noise-level gradients, which Adam's first
            # steps turn into +-lr moves whose signs rounding decides; after 6 steps that
            # has moved a selection (measured: losses within 2e-5, weights 3e-3 apart).
            continue
        # The same selections, and the same weights up to a small share of one Adam step
        # (the factors themselves may rotate within near-equal singular values).
        for key in (k for k in ref["state"] if k.endswith(".idx")):
            assert torch.equal(a["state"][key], ref["state"][key]), (name, key)
        # Adam's +-lr moves of noise-level gradients (embedding rows seen once) reach
        # 3.6e-3 in a few entries on some CPUs (an AVX-512 EPYC), 5e-4 on others: every
        # entry within two steps (lr 3e-3) of one process's.
        for key, value in ref["merged"].items():
            torch.testing.assert_close(a["merged"][key], value, rtol=0, atol=6e-3,
                                       msg=f"{name} {key}")
    for name in ("mt_euclidean", "mt_hyperbolic"):
        for key in ("val_loss", "test_loss"):
            assert ranks[0][name]["summary"][key] == pytest.approx(
                single[name]["summary"][key], rel=1e-4), (name, key)
    # FSDP2: the same training to rounding (its gather-free re-SVD of the square layers
    # may pick other vectors of near-zero singular values than LAPACK: not bitwise).
    one_lines = _train_lines(tmp_path / "one" / "mt_euclidean")
    for got, want in zip(_train_lines(tmp_path / "ddp" / "mt_fsdp2"), one_lines, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
    for key in ("val_loss", "test_loss"):
        assert ranks[0]["mt_fsdp2"][key] == pytest.approx(single["mt_euclidean"]["summary"][key],
                                                          rel=1e-4), key
    assert ranks[0]["mt_fsdp2"]["examples"] and ranks[0]["mt_fsdp2"]["world_size"] == 2
    for name, metric in (("graph_nc", "f1"), ("graph_lp", "roc")):
        assert ranks[0][name]["summary"]["test"][metric] == pytest.approx(
            single[name]["summary"]["test"][metric], abs=1e-5)

    for r in (0, 1):  # resumed under DDP: bitwise the uninterrupted run
        for key, value in ranks[0]["mt_euclidean"]["state"].items():
            assert torch.equal(ranks[r]["mt_resumed"][key], value), key
        errors = ranks[r]["errors"]
        assert "the smallest global micro-batch has only 1 rows, fewer than the 2 ranks" \
            in errors["one_sentence"]
        assert "parallel='fsdp2' is not supported by the graph task" in errors["graph_fsdp2"]
        assert "parallel='fsdp2' is not supported by model='hyperbolic'" \
            in errors["hyperbolic_fsdp2"]
    assert not (tmp_path / "ddp" / "tiny").exists()
    assert not (tmp_path / "ddp" / "fsdp").exists()


def test_sentence_shares_reweight_to_the_batch_mean():
    """Uneven shares of a padded batch: weighted means average to the whole mean."""
    pad = 0
    lengths = [5, 5, 4, 3, 3, 2, 1]
    gen = torch.Generator().manual_seed(0)
    tgt_out = torch.zeros(len(lengths), 6, dtype=torch.long)
    for row, n in enumerate(lengths):
        tgt_out[row, :n] = torch.randint(1, 9, (n,), generator=gen)
    src = tgt_out.flip(0).clone()  # other widths per row
    tgt_in = tgt_out.roll(1, dims=1)
    per_token = torch.rand(tgt_out.shape, generator=gen)
    whole = per_token[tgt_out != pad].mean()
    for count in (1, 2, 3, 7):
        total, rows = 0.0, 0
        for index in range(count):
            s, ti, to, weight = sentence_share(src, tgt_in, tgt_out, pad, index, count)
            part = per_token[rows:rows + len(to), :to.shape[1]]
            assert torch.equal(to, tgt_out[rows:rows + len(to), :to.shape[1]])
            assert (to[:, -1] != pad).any() and (s[:, -1] != pad).any()  # trimmed to width
            assert ti.shape == to.shape
            total += weight * float(part[to != pad].mean())
            rows += len(to)
        assert rows == len(lengths)
        assert total / count == pytest.approx(float(whole), rel=1e-6)
    with pytest.raises(ValueError, match="part 0 of 8 of a batch of 7 sentences"):
        sentence_share(src, tgt_in, tgt_out, pad, 0, 8)


@pytest.mark.parametrize("count", [2, 3])
def test_graph_loss_parts_average_to_the_whole_loss_and_gradient(count):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(11, 4, generator=gen, requires_grad=True)
    labels = torch.randint(0, 4, (11,), generator=gen)
    pos = torch.randn(9, generator=gen, requires_grad=True)
    neg = torch.randn(9, generator=gen, requires_grad=True)
    for loss, inputs in ((lambda p: hinge_loss(logits, labels, 2.0, p), [logits]),
                         (lambda p: margin_loss(pos, neg, 2.0, p), [pos, neg])):
        whole = loss(None)
        parts = sum(loss((i, count)) for i in range(count)) / count
        torch.testing.assert_close(parts, whole)
        for g_whole, g_parts in zip(torch.autograd.grad(whole, inputs),
                                    torch.autograd.grad(parts, inputs)):
            torch.testing.assert_close(g_parts, g_whole)
