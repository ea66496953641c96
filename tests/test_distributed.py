"""DDP in the training engine: 2 spawned gloo ranks against one process, resume, bad input.

Each launch costs ~3 s of start-up, so one launch runs several checks; the ranks report
through files in ``tmp_path``. One end-to-end ``torchrun`` run of the CLI closes the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_helpers import raised_errors, run_distributed
from engine_helpers import shakespeare_excerpt
from safetensors.torch import load_file

from sparse_spectral.tasks.lm import LM, LMSettings
from sparse_spectral.training.checkpoint import (
    latest_checkpoint,
    read_checkpoint_state,
    verify_checkpoint,
)
from sparse_spectral.training.compare import run_compare, weight_spectra
from sparse_spectral.training.distributed import (
    World,
    check_rows,
    launch_env,
    setup,
    shard_rows,
)
from sparse_spectral.training.runfolder import RunLock
from sparse_spectral.training.runner import build_method, train_run, unsharded

STEPS = 8


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return shakespeare_excerpt(tmp_path_factory, 20000)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))  # spawned ranks inherit it


def _settings(corpus: str, out: str, method: str = "sst", **kw) -> LMSettings:
    """gpt_micro, a global micro-batch of 4 rows, 2 micro-batches per step; SST changes
    selections every 2 steps and re-SVDs every 4 (per layer, staggered)."""
    options = {"sst": {"iteration_interval": 2, "iterations_per_round": 2},
               "galore": {"update_proj_gap": 2}, "relora": {"merge_interval": 3},
               "apollo": {"update_proj_gap": 3}}[method]
    values = dict(text=corpus, model="gpt_micro", rank=4, block_size=16, batch_size=4,
                  total_batch_size=8, num_training_steps=STEPS, warmup_steps=2, eval_every=4,
                  eval_tokens=256, log_every=1, save_every=4, output_dir=out, method=method,
                  method_options=options)
    return LMSettings.from_dict(values | kw)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _truncate_to(run: Path, step: int) -> None:
    """Pretend ``run`` died after its checkpoint of ``step``."""
    root = run / "checkpoints"
    for path in root.glob("step_*"):
        if int(path.name.split("_")[1]) > step:
            shutil.rmtree(path)
    (root / "latest").write_text(f"step_{step:06d}\n")


# ---------------------------------------------------------------------- the spawned job
class _RecordingLM(type(LM)):
    """The lm task, noting the first token of every row each micro-batch trains on."""

    def __init__(self):
        self.rows: list[list[int]] = []

    def loss(self, settings, data):
        inner = super().loss(settings, data)

        def loss_fn(model, inputs, targets):
            self.rows.append(inputs[:, 0].tolist())
            return inner(model, inputs, targets)

        return loss_fn


def _job(rank: int, world_size: int, corpus: str, tmp: str) -> None:
    """Per rank: SST, ReLoRA*, GaLore, APOLLO runs; a resume; bad launches. Results to files.

    APOLLO's projections are counter-seeded, so the ranks draw the same ones unprompted."""
    tmp = Path(tmp)
    report = {}
    for method in ("sst", "relora", "galore", "apollo"):
        task = _RecordingLM()
        outcome = train_run(task, _settings(corpus, str(tmp / f"ddp_{method}"), method),
                            progress=False)
        report[method] = {"state": _state(outcome.model), "summary": outcome.summary,
                          "merged": _state(outcome.method.merge(outcome.model)),
                          "rows": task.rows}
    # Resume under DDP: a copy of the SST run cut back to step 4, continued to the end.
    if rank == 0:
        shutil.copytree(tmp / "ddp_sst", tmp / "ddp_resumed")
        _truncate_to(tmp / "ddp_resumed", 4)
    torch.distributed.barrier()
    resumed = train_run(LM, _settings(corpus, str(tmp / "ddp_resumed")), resume=True,
                        progress=False)
    report["resumed"] = _state(resumed.model)
    # Bad launches: every rank must raise, before writing anything.
    report["errors"] = raised_errors({
        "odd_batch": lambda: train_run(LM, _settings(corpus, str(tmp / "odd"), batch_size=3,
                                                     total_batch_size=3), progress=False),
        "other_world": lambda: train_run(LM, _settings(corpus, str(tmp / "one_resumed")),
                                         resume=True, progress=False),
        # the run folder's rules: an old run without --overwrite, a live writer's folder
        "old_run": lambda: train_run(LM, _settings(corpus, str(tmp / "ddp_sst")),
                                     progress=False),
        "held": lambda: train_run(LM, _settings(corpus, str(tmp / "held")), progress=False)})
    torch.save(report, tmp / f"rank{rank}.pt")


def test_two_ranks_match_one_process_and_each_other(corpus_file, tmp_path):
    torch.set_num_threads(1)  # as the ranks: the re-SVDs then compute the same bits
    single = {}
    for method in ("sst", "relora", "galore", "apollo"):
        task = _RecordingLM()  # the rows one process trains on
        outcome = train_run(task, _settings(str(corpus_file), str(tmp_path / f"one_{method}"),
                                            method), progress=False)
        single[method] = {"merged": _state(outcome.method.merge(outcome.model)),
                          "state": _state(outcome.model), "summary": outcome.summary,
                          "rows": task.rows}
    shutil.copytree(tmp_path / "one_sst", tmp_path / "one_resumed")  # for the bad resume
    _truncate_to(tmp_path / "one_resumed", 4)
    one_resumed_log = (tmp_path / "one_resumed" / "metrics.jsonl").read_text()

    (tmp_path / "held").mkdir()
    holder = RunLock(tmp_path / "held")  # this process writes there while the ranks try
    holder.acquire()
    try:
        run_distributed(_job, 2, tmp_path, str(corpus_file), str(tmp_path))
    finally:
        holder.release()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # Each rank trained its half of every global micro-batch (rows in order).
    assert len(single["sst"]["rows"]) == STEPS * 2
    for rank0, rank1, whole in zip(ranks[0]["sst"]["rows"], ranks[1]["sst"]["rows"],
                                   single["sst"]["rows"], strict=True):
        assert rank0 + rank1 == whole and len(rank0) == 2
    for method in ("sst", "relora", "galore", "apollo"):
        a, b = ranks[0][method], ranks[1][method]
        # The ranks hold bitwise the same model (through swaps and re-SVDs for SST).
        assert a["state"].keys() == b["state"].keys()
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key]), (method, key)
        # ... and the same model as one process on the same global batches.
        ref = single[method]
        for key, value in ref["merged"].items():
            if method == "sst":
                # One process and two ranks reduce gradients in other orders; Adam turns
                # noise-level differences into +-lr moves of a few entries (its first steps,
                # and each swapped-in slot's): measured 7e-5 at most on an AVX-512 EPYC,
                # under 1e-5 elsewhere, with the same selections: within a tenth of one step
                # (lr 1e-3) of every entry.
                torch.testing.assert_close(a["merged"][key], value, rtol=0, atol=1e-4,
                                           msg=f"{method} {key}")
            else:
                torch.testing.assert_close(a["merged"][key], value, rtol=1e-5, atol=1e-5,
                                           msg=f"{method} {key}")
        if method == "sst":  # the same selections
            for key in (k for k in ref["state"] if k.endswith(".idx")):
                assert torch.equal(a["state"][key], ref["state"][key]), key
        for key in ("val_loss", "test_ppl"):
            assert a["summary"][key] == pytest.approx(ref["summary"][key], rel=1e-5), key
        # Rank 0 alone wrote: one train line per step, one checkpoint set, a summary.
        run = tmp_path / f"ddp_{method}"
        train_lines = [r for r in _records(run) if "train_loss" in r]
        assert [r["step"] for r in train_lines] == list(range(1, STEPS + 1))
        one_lines = [r for r in _records(tmp_path / f"one_{method}") if "train_loss" in r]
        for got, want in zip(train_lines, one_lines, strict=True):
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "latest", "step_000004", "step_000008"]
        assert sorted(p.name for p in run.iterdir()) == [  # .lock: rank 0's, released
            ".lock", "checkpoints", "metrics.jsonl", "summary.json"]
        state = read_checkpoint_state(latest_checkpoint(run))
        assert state["environment"]["world_size"] == 2
        assert json.loads((run / "summary.json").read_text())["world_size"] == 2

    # Resumed under DDP from step 4: bitwise the uninterrupted run, one line per step.
    for r in (0, 1):
        for key, value in ranks[0]["sst"]["state"].items():
            assert torch.equal(ranks[r]["resumed"][key], value), key
    assert [r["step"] for r in _records(tmp_path / "ddp_resumed") if "train_loss" in r] \
        == list(range(1, STEPS + 1))

    # Bad launches fail on both ranks, naming the problem, before writing anything.
    for r in (0, 1):
        errors = ranks[r]["errors"]
        assert "world size 2 does not divide the global micro-batch of 3 rows" \
            in errors["odd_batch"]
        assert "written by a run of 1 process(es), this one has 2" in errors["other_world"]
        assert "ddp_sst already holds a run" in errors["old_run"]
    # rank 0 probes the lock and names its holder; rank 1 fails with it
    holder_named = f"being written by another run (pid {os.getpid()} on host"
    assert holder_named in ranks[0]["errors"]["held"]
    assert ranks[1]["errors"]["held"] == "rank 0 refused the run folder (its error says why)"
    assert list((tmp_path / "held").iterdir()) == [tmp_path / "held" / ".lock"]
    assert not (tmp_path / "odd").exists()
    assert (tmp_path / "one_resumed" / "metrics.jsonl").read_text() == one_resumed_log

    # The other way round: one process refuses the 2-rank checkpoint.
    with pytest.raises(ValueError, match=r"written by a run of 2 process\(es\), this one has 1"):
        train_run(LM, _settings(str(corpus_file), str(tmp_path / "ddp_sst")), resume=True,
                  progress=False)


# ---------------------------------------------------------------------- FSDP2 in the engine
# The square attention output stays dense: its near-zero singular values' vectors are free,
# so FSDP2's gather-free re-SVD and LAPACK's may part ways (both correct; measured 1e-4 in
# gpt_micro's second block after 8 steps). The other layers are rectangular.
FSDP_RUN = {"exclude_modules": ["attn.c_proj"]}


def _full_state(model) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in state.items()}


def _merged(settings, state) -> dict[str, torch.Tensor]:
    """Dense weights of a one-process model holding ``state`` (invariant to SVD signs: the
    sharded re-SVD and LAPACK's may pick different ones)."""
    model = LM.build_model(settings, LM.prepare_data(settings))
    method = build_method(LM, settings, model)
    model = method.prepare(model)
    model.load_state_dict(state)
    return {k: v.detach().clone() for k, v in method.merge(model).state_dict().items()}


def _digits_fp16(out: str, **kw):
    from sparse_spectral.tasks.images import ImagesSettings

    return ImagesSettings.from_dict(dict(
        dataset="digits", hidden=[32, 32], rank=4, epochs=1, batch_size=32, warmup_steps=5,
        eval_every=20, output_dir=out, method="sst", precision="fp16-mixed", device="cpu",
        method_options={"iteration_interval": 5}) | kw)


def _one_rank_inf_skips_everywhere(rank: int) -> dict:
    """The engine's fp16 scaler under FSDP2: an inf in rank 0's gradient shard only must
    make both ranks skip the step (and halve the scale)."""
    from torch import nn

    from sparse_spectral.training.device import grad_scaler
    from sparse_spectral.training.fsdp import shard_model

    torch.manual_seed(0)
    model = shard_model(nn.Sequential(nn.Linear(4, 4)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = grad_scaler("fp16-mixed", torch.device("cpu"), sharded=True)
    before = [p.to_local().clone() for p in model.parameters()]
    scaler.scale(model(torch.ones(2, 4)).sum()).backward()
    if rank == 0:
        next(model.parameters()).grad.to_local().view(-1)[0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return {"halved": scaler.get_scale() == scale / 2,
            "unchanged": all(torch.equal(p.to_local(), b)
                             for p, b in zip(model.parameters(), before, strict=True))}


def _fsdp_job(rank: int, world_size: int, corpus: str, tmp: str) -> None:
    """Per rank: an FSDP2 SST run, a resume of it, bad launches. Results to files."""
    tmp = Path(tmp)
    fsdp = {"parallel": "fsdp2", **FSDP_RUN}
    outcome = train_run(LM, _settings(corpus, str(tmp / "fsdp_sst"), **fsdp), progress=False)
    report = {"state": _full_state(outcome.model), "summary": outcome.summary}
    settings = _settings(corpus, str(tmp / "unused"), **fsdp)
    copy = unsharded(LM, settings, LM.prepare_data(settings), outcome)  # rank 0 only
    report["copy"] = None if copy is None else _state(copy.model)
    results = run_compare(LM, _settings(corpus, str(tmp / "fsdp_compare"), **fsdp), ["sst"])
    report["spectra"] = results["methods"]["sst"].get("spectra")
    from sparse_spectral.tasks.images import IMAGES

    report["fp16"] = train_run(IMAGES, _digits_fp16(str(tmp / "fsdp_fp16"), parallel="fsdp2"),
                               progress=False).summary
    report["inf"] = _one_rank_inf_skips_everywhere(rank)
    if rank == 0:
        shutil.copytree(tmp / "fsdp_sst", tmp / "fsdp_resumed")
        _truncate_to(tmp / "fsdp_resumed", 4)
    torch.distributed.barrier()
    resumed = train_run(LM, _settings(corpus, str(tmp / "fsdp_resumed"), **fsdp), resume=True,
                        progress=False)
    report["resumed"] = _full_state(resumed.model)
    report["errors"] = raised_errors({
        "galore": lambda: train_run(LM, _settings(corpus, str(tmp / "galore"), "galore",
                                                  **fsdp), progress=False),
        "compare_galore": lambda: run_compare(
            LM, _settings(corpus, str(tmp / "galore"), **fsdp), ["sst", "galore"]),
        "other_mode": lambda: train_run(
            LM, _settings(corpus, str(tmp / "one_resumed"), **fsdp), resume=True,
            progress=False)})
    torch.save(report, tmp / f"fsdp_rank{rank}.pt")


def test_fsdp2_engine_matches_one_process(corpus_file, tmp_path):
    """``--parallel fsdp2`` on 2 ranks: the one-process run's figures, rank 0 alone writes
    (DCP shards plus the gathered model), an exact resume, bad launches refused."""
    torch.set_num_threads(1)
    settings = _settings(str(corpus_file), str(tmp_path / "one_sst"), **FSDP_RUN)
    single = train_run(LM, settings, progress=False)
    shutil.copytree(tmp_path / "one_sst", tmp_path / "one_resumed")
    _truncate_to(tmp_path / "one_resumed", 4)
    one_resumed_log = (tmp_path / "one_resumed" / "metrics.jsonl").read_text()

    from sparse_spectral.tasks.images import IMAGES

    fp16 = train_run(IMAGES, _digits_fp16(str(tmp_path / "one_fp16")), progress=False).summary

    run_distributed(_fsdp_job, 2, tmp_path, str(corpus_file), str(tmp_path))
    ranks = [torch.load(tmp_path / f"fsdp_rank{r}.pt", weights_only=False) for r in (0, 1)]

    # Both ranks gather the same model, equal to one process's up to float rounding.
    for key, value in ranks[0]["state"].items():
        assert torch.equal(ranks[1]["state"][key], value), key
        assert torch.equal(ranks[0]["copy"][key], value), key  # rank 0's one-process copy
    assert ranks[1]["copy"] is None and ranks[1]["spectra"] is None
    for name, spectrum in weight_spectra(single.model, single.method).items():  # compare's
        torch.testing.assert_close(torch.tensor(ranks[0]["spectra"][name]),
                                   torch.tensor(spectrum), rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((tmp_path / "fsdp_compare" / "results.json").read_text())[
        "methods"]["sst"]["spectra"] == ranks[0]["spectra"]
    merged, want = _merged(settings, ranks[0]["state"]), _merged(settings, _state(single.model))
    assert merged.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-5, msg=key)
    single_state = _state(single.model)
    selections = [k for k in single_state if k.endswith(".idx")]
    assert selections  # the same selections as one process
    for key in selections:
        assert torch.equal(ranks[0]["state"][key], single_state[key]), key
    for key in ("val_loss", "test_ppl"):
        assert ranks[0]["summary"][key] == pytest.approx(single.summary[key], rel=1e-5), key
    # Each rank holds its shards of the gradients and optimizer state (the summary's figure).
    # (the halves add up to one process's, plus the few replicated step counters: measured
    # 304 of 109,744 bytes)
    halves = [r["summary"]["grad_optimizer_bytes"] for r in ranks]
    whole = single.summary["grad_optimizer_bytes"]
    assert whole <= sum(halves) < 1.01 * whole and max(halves) < 0.51 * whole
    run = tmp_path / "fsdp_sst"
    train_lines = [r for r in _records(run) if "train_loss" in r]
    assert [r["step"] for r in train_lines] == list(range(1, STEPS + 1))
    one_lines = [r for r in _records(tmp_path / "one_sst") if "train_loss" in r]
    for got, want_line in zip(train_lines, one_lines, strict=True):
        assert got["train_loss"] == pytest.approx(want_line["train_loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(want_line["grad_norm"], rel=1e-4)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "metrics.jsonl",
                                                      "summary.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest", "step_000004", "step_000008"]
    last = latest_checkpoint(run)
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "method.json", "model.safetensors",
            "state.pt", "manifest.json"} == {p.name for p in last.iterdir()}
    # the manifest covers every rank's shards, and a resume verifies them
    listed = json.loads((last / "manifest.json").read_text())["files"]
    assert set(listed) == {p.name for p in last.iterdir()} - {"manifest.json"}
    verify_checkpoint(last)
    environment = read_checkpoint_state(last)["environment"]
    assert (environment["parallel"], environment["world_size"]) == ("fsdp2", 2)
    gathered = load_file(last / "model.safetensors")  # the full model, written by rank 0
    assert gathered.keys() == ranks[0]["state"].keys()
    for key, value in gathered.items():
        assert torch.equal(value, ranks[0]["state"][key]), key

    # fp16-mixed (images, SST): the sharded loss scaler agrees on every skip.
    for r in (0, 1):
        assert ranks[r]["inf"] == {"halved": True, "unchanged": True}
    assert ranks[0]["fp16"]["final_step"] == fp16["final_step"]
    for key in ("val_loss", "val_accuracy", "test_accuracy"):  # (its test loss is nan in both)
        assert ranks[0]["fp16"][key] == pytest.approx(fp16[key], rel=1e-4), key

    # Resumed from the step-4 shards: bitwise the uninterrupted run, one line per step.
    for r in (0, 1):
        for key, value in ranks[0]["state"].items():
            assert torch.equal(ranks[r]["resumed"][key], value), key
    assert [r["step"] for r in _records(tmp_path / "fsdp_resumed") if "train_loss" in r] \
        == list(range(1, STEPS + 1))

    # Refused on both ranks before writing: GaLore, a DDP checkpoint.
    for r in (0, 1):
        errors = ranks[r]["errors"]
        assert "'galore' cannot run with --parallel fsdp2" in errors["galore"]
        assert "'galore' cannot run with --parallel fsdp2" in errors["compare_galore"]
        assert "written with --parallel ddp, this run uses fsdp2" in errors["other_mode"]
    assert not (tmp_path / "galore").exists()
    assert (tmp_path / "one_resumed" / "metrics.jsonl").read_text() == one_resumed_log
    # ... and one process refuses the FSDP2 checkpoint, and fsdp2 without torchrun.
    with pytest.raises(ValueError, match="written with --parallel fsdp2, this run uses ddp"):
        train_run(LM, _settings(str(corpus_file), str(run), **FSDP_RUN), resume=True,
                  progress=False)
    with pytest.raises(ValueError, match="parallel='fsdp2' needs a torchrun launch"):
        train_run(LM, _settings(str(corpus_file), str(tmp_path / "nope"), parallel="fsdp2"),
                  progress=False)
    assert not (tmp_path / "nope").exists()


# ---------------------------------------------------------------------- torchrun, end to end
def test_torchrun_cli_end_to_end(corpus_file, tmp_path):
    """``torchrun --standalone --nproc_per_node 2 -m sparse_spectral.cli train lm``, resumed."""
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "sparse_spectral.cli", "train", "lm", "--text", str(corpus_file),
            "--model", "gpt_micro", "--method", "sst", "--rank", "4", "--block_size", "16",
            "--batch_size", "4", "--num_training_steps", "4", "--warmup_steps", "1",
            "--eval_every", "4", "--eval_tokens", "256", "--log_every", "1",
            "--save_every", "2", "--iteration_interval", "1", "--output_dir", str(out),
            "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sst: val ppl") == 1  # rank 0 alone reports
    steps = [r["step"] for r in _records(out) if "train_loss" in r]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest", "step_000002", "step_000004"]
    final = load_file(out / "checkpoints" / "step_000004" / "model.safetensors")
    _truncate_to(out, 2)
    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in _records(out) if "train_loss" in r] == [1, 2, 3, 4]
    resumed = load_file(out / "checkpoints" / "step_000004" / "model.safetensors")
    for key, value in final.items():
        assert torch.equal(resumed[key], value), key
    # A world size that does not divide the batch: every rank exits with the error.
    odd = [str(tmp_path / "odd") if a == str(out) else a for a in args] + ["--batch_size", "3"]
    done = subprocess.run(odd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("world size 2 does not divide the global micro-batch") == 2
    assert not (tmp_path / "odd").exists()


# ---------------------------------------------------------------------- no process group
def test_shard_rows_splits_every_tensor_contiguously():
    x, y = torch.arange(12).view(6, 2), torch.arange(6)
    parts = [shard_rows(((x, {"y": y}), "keep"), World(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat([p[0][0] for p in parts]), x)
    assert torch.equal(torch.cat([p[0][1]["y"] for p in parts]), y)
    assert all(p[1] == "keep" for p in parts)
    with pytest.raises(ValueError, match="7 rows cannot be split evenly over 2 ranks"):
        shard_rows(torch.zeros(7), World(0, 2))


def test_launch_environment_and_bad_choices(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launch_env() is None
    assert setup(torch.device("cpu")) == (None, torch.device("cpu"))  # unchanged
    with pytest.raises(ValueError, match="parallel='ddp' needs a torchrun launch"):
        setup(torch.device("cpu"), "ddp")
    with pytest.raises(ValueError, match="parallel='fsdp2' needs a torchrun launch"):
        setup(torch.device("cpu"), "fsdp2")
    with pytest.raises(ValueError, match="parallel='fsdp' is unknown; allowed: auto, ddp, fsdp2"):
        LMSettings.from_dict({"parallel": "fsdp"})
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="0 <= RANK < WORLD_SIZE"):
        launch_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_env() == (1, 2, 1)
    with pytest.raises(ValueError, match="task 'x' cannot run under DDP: its batches cannot"):
        check_rows(None, World(0, 2), "x")
    check_rows(None, World(0, 2), "mt", min_rows=2)
    with pytest.raises(ValueError, match="task 'mt': the smallest global micro-batch has only "
                                         "2 rows, fewer than the 3 ranks"):
        check_rows(None, World(0, 3), "mt", min_rows=2)
