"""SpectralTrainer runs of a tiny LLaMA with SST, for tests/test_hf_distributed.py.

``torchrun --standalone --nproc_per_node 2 tests/hf_ddp_run.py OUT MODE``, or :func:`run`
in one process. ``MODE``:

* ``straight``: train :data:`STEPS` steps, a checkpoint every :data:`SAVE_EVERY`;
* ``resume``: ``train(resume_from_checkpoint=True)`` in the same ``OUT``, then the checks
  of :func:`checks` (under torchrun only).

Every rank writes ``OUT/<MODE>_rank<r>.pt``: its weights and method state, what
``collectives.world()`` said inside ``method.after_step`` and after each optimizer step,
and which method states it saved and loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from sparse_spectral._util import collectives
from sparse_spectral.methods import make_method
from sparse_spectral.methods.guard import MethodGuardError
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.training.hf import SpectralTrainer

VOCAB, BLOCK, ROWS = 64, 16, 32
GLOBAL_BATCH, STEPS, SAVE_EVERY = 4, 8, 4
# Selections change every 2 steps, each layer re-SVDs every 4 (staggered over the 14 layers).
SST = {"rank": 4, "iteration_interval": 2, "iterations_per_round": 2}


class TokenBlocks(torch.utils.data.Dataset):
    """Fixed random token blocks; labels are the inputs (the model shifts them)."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (ROWS, BLOCK), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class WorldSeen(TrainerCallback):
    """``collectives.world()`` after each optimizer step (inside ``train``)."""

    def __init__(self):
        self.seen = []

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.seen.append(collectives.world())


def llama() -> LlamaForCausalLM:
    """Two blocks, width 32: 14 linear layers (square attention, rectangular MLP)."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=BLOCK,
        attention_dropout=0.0, tie_word_embeddings=False))


def arguments(out: Path, world_size: int, **overrides) -> TrainingArguments:
    """The same global batch of :data:`GLOBAL_BATCH` rows whatever the world size."""
    settings = dict(output_dir=str(out), max_steps=STEPS,
                    per_device_train_batch_size=GLOBAL_BATCH // world_size,
                    learning_rate=1e-3, warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
                    logging_strategy="no", save_strategy="steps", save_steps=SAVE_EVERY,
                    report_to="none", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
                    dataloader_num_workers=0)
    return TrainingArguments(**(settings | overrides))


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(out: str | Path, mode: str, world_size: int = 1) -> dict:
    """Train (``straight``) or resume; return (and write, per rank) what it ended with."""
    out = Path(out)
    method = make_method("sst", **SST)
    model = method.prepare(llama())
    args = arguments(out, world_size)
    inside, saved, loaded, seen = [], [], [], WorldSeen()
    after_step, state_dict, load_state_dict = (method.after_step, method.state_dict,
                                               method.load_state_dict)
    method.after_step = lambda step, optimizer=None: (inside.append(collectives.world()),
                                                      after_step(step, optimizer))
    method.state_dict = lambda: (saved.append(method.step), state_dict())[1]
    method.load_state_dict = lambda state: (loaded.append(state["step"]), load_state_dict(state))
    trainer = SpectralTrainer(method=method, model=model, args=args,
                              train_dataset=TokenBlocks(), callbacks=[seen])
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    result = {"weights": _weights(model), "method": state_dict(), "saved": saved,
              "loaded": loaded, "after_step_world": inside,
              "optimizer_step_world": seen.seen, "global_step": trainer.state.global_step}
    torch.save(result, out / f"{mode}_rank{args.process_index}.pt")
    return result


def _perturbed_run(out: Path, rank: int, world_size: int) -> dict:
    """The straight run, but rank 1's own re-SVDs come out different (as another LAPACK's
    bits would): the owner's result is what every rank trains on."""
    resvd = SpectralLinear.resvd_
    calls = []

    def other_bits(layer, *args, **kwargs):
        resvd(layer, *args, **kwargs)
        calls.append(1)
        if rank == 1:
            layer.s.data.mul_(1 + 1e-3)

    SpectralLinear.resvd_ = other_bits
    try:
        method = make_method("sst", **SST)
        model = method.prepare(llama())
        SpectralTrainer(method=method, model=model, train_dataset=TokenBlocks(),
                        args=arguments(out, world_size, save_strategy="no")).train()
    finally:
        SpectralLinear.resvd_ = resvd
    return {"weights": _weights(model), "resvd_calls": len(calls)}


def checks(out: Path, rank: int, world_size: int) -> dict:
    """Per rank: the perturbed run, a stock Trainer (the guard), and sharded settings."""
    report = {"perturbed": _perturbed_run(out / "perturbed", rank, world_size)}
    method = make_method("sst", **SST)
    model = method.prepare(llama())
    stock = Trainer(model=model, args=arguments(out / "stock", world_size, save_strategy="no"),
                    train_dataset=TokenBlocks())
    try:
        stock.train()
        report["guard"] = None
    except MethodGuardError as error:
        report["guard"] = (str(error), stock.state.global_step)
    try:
        SpectralTrainer(method=method, model=model, train_dataset=TokenBlocks(),
                        args=arguments(out / "fsdp", world_size, fsdp=True))
        report["fsdp"] = None
    except ValueError as error:
        report["fsdp"] = str(error)
    torch.save(report, out / f"checks_rank{rank}.pt")
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, mode = Path(sys.argv[1]), sys.argv[2]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run(out, mode, world)
    if mode == "resume":
        checks(out, int(os.environ.get("RANK", "0")), world)
