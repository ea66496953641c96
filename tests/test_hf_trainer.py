"""sparse_spectral.training.hf: every method in a stock transformers.Trainer.

The method's own optimizer and the Trainer's schedule (times the method's restart factor),
``after_step`` once per optimizer step, clipping, and checkpoints that resume bit-exactly;
a stock Trainer without the integration is stopped by the guard. Tiny GPT-2 models built
from configs, on CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from sparse_spectral.methods import make_method
from sparse_spectral.methods.apollo_optim import ApolloAdamW
from sparse_spectral.methods.galore_optim import GaLoreAdamW
from sparse_spectral.methods.guard import MethodGuardError
from sparse_spectral.spectral import SlotAdamW, SpectralLinear
from sparse_spectral.training.hf import METHOD_STATE_NAME, SpectralCallback, SpectralTrainer
from sparse_spectral.training.schedules import method_lr_lambda

VOCAB, BLOCK = 64, 16
SST = {"rank": 4, "iteration_interval": 2, "iterations_per_round": 2}


class TokenBlocks(torch.utils.data.Dataset):
    """Fixed random token blocks; labels are the inputs (GPT-2 shifts them)."""

    def __init__(self, count: int = 24, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (count, BLOCK), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def gpt2(dropout: float = 0.0):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB,
                                      n_positions=BLOCK, resid_pdrop=dropout,
                                      embd_pdrop=dropout, attn_pdrop=dropout))


def arguments(out, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(out), max_steps=8, per_device_train_batch_size=4,
                    learning_rate=1e-2, warmup_steps=2, lr_scheduler_type="cosine_with_min_lr",
                    lr_scheduler_kwargs={"min_lr_rate": 0.1}, weight_decay=0.0,
                    max_grad_norm=1.0, logging_strategy="no", save_strategy="no",
                    report_to="none", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
                    dataloader_num_workers=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def spectral_trainer(out, name="sst", settings=None, dropout=0.0, callbacks=None, **overrides):
    method = make_method(name, **(SST if settings is None else settings))
    model = method.prepare(gpt2(dropout))
    trainer = SpectralTrainer(method=method, model=model, args=arguments(out, **overrides),
                              train_dataset=TokenBlocks(), callbacks=callbacks)
    return trainer, method, model


def spectral_layers(model):
    return [m for m in model.modules() if isinstance(m, SpectralLinear)]


class Recorder(TrainerCallback):
    """Learning rate of each optimizer step, and the gradient norm right before it."""

    def __init__(self):
        self.lrs, self.grad_norms = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.grad_norms.append(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


# --------------------------------------------------------------------------- training
def test_sst_trains_with_its_own_optimizer_and_schedule(tmp_path):
    trainer, method, model = spectral_trainer(tmp_path)
    before = [layer.idx.clone() for layer in spectral_layers(model)]
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, SlotAdamW)  # accelerate wraps it
    assert method.step == trainer.state.global_step == 8
    layers = spectral_layers(model)
    assert any(not torch.equal(b, layer.idx) for b, layer in zip(before, layers))
    for layer in layers:
        assert bool((layer.s >= 0).all())
        for norms in (layer.U_active.norm(dim=0), layer.Vh_active.norm(dim=1)):
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["full", "lora", "relora", "galore", "apollo", "apollo_mini"])
def test_every_method_trains_with_its_optimizer(tmp_path, name):
    settings = {"full": {}, "lora": {"rank": 4}, "relora": {"rank": 4, "merge_interval": 3},
                "galore": {"rank": 4, "update_proj_gap": 3},
                "apollo": {"rank": 4, "update_proj_gap": 3},
                "apollo_mini": {"update_proj_gap": 3}}[name]
    trainer, method, _ = spectral_trainer(tmp_path, name, settings, max_steps=4)
    trainer.train()
    inner = trainer.optimizer.optimizer
    kinds = {"galore": GaLoreAdamW, "apollo": ApolloAdamW, "apollo_mini": ApolloAdamW}
    assert type(inner) is kinds.get(name, SlotAdamW)
    assert method.step == 4


@pytest.mark.parametrize("name, settings", [
    ("relora", {"rank": 4, "merge_interval": 3, "restart_warmup_steps": 2}),
    ("sst", {**SST, "stagger_resvd": False, "restart_warmup_steps": 1}),
    ("sst", SST),
])
def test_lr_is_the_trainer_base_lr_times_method_lr_lambda(tmp_path, name, settings):
    recorder = Recorder()
    trainer, method, _ = spectral_trainer(tmp_path, name, settings, callbacks=[recorder])
    trainer.train()
    multiplier = method_lr_lambda(method, total_steps=8, warmup_steps=2, min_lr_ratio=0.1)
    expected = [1e-2 * multiplier(t) for t in range(8)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if settings.get("restart_warmup_steps"):
        assert 0.0 in recorder.lrs[1:]  # a re-warm-up started from 0 after a restart


def test_gradient_accumulation_runs_after_step_once_per_optimizer_step(tmp_path):
    trainer, method, model = spectral_trainer(tmp_path, max_steps=4,
                                              gradient_accumulation_steps=2)
    calls, forwards = [], []
    after_step = method.after_step
    method.after_step = lambda step, optimizer=None: (calls.append(step),
                                                      after_step(step, optimizer))
    model.register_forward_hook(lambda *args: forwards.append(1))
    trainer.train()
    assert calls == [1, 2, 3, 4]
    assert len(forwards) == 8
    wte = model.transformer.wte.weight
    assert trainer.optimizer.optimizer.state[wte]["step"].item() == 4  # optimizer steps


def test_max_grad_norm_clips_the_method_parameters(tmp_path):
    recorder = Recorder()
    trainer, _, _ = spectral_trainer(tmp_path, max_steps=3, max_grad_norm=1e-3,
                                     callbacks=[recorder])
    trainer.train()
    assert all(norm <= 1e-3 * (1 + 1e-4) for norm in recorder.grad_norms), recorder.grad_norms


# --------------------------------------------------------------------------- resume
def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name, settings, dropout", [
    ("sst", SST, 0.1),
    ("relora", {"rank": 4, "merge_interval": 3}, 0.0),
    ("galore", {"rank": 4, "update_proj_gap": 3}, 0.0),
    ("apollo", {"rank": 4, "update_proj_gap": 2}, 0.0),  # resumed at step 3: mid-refresh
])
def test_resume_from_a_checkpoint_is_bit_exact(tmp_path, name, settings, dropout):
    straight, method_a, model_a = spectral_trainer(tmp_path / "a", name, settings, dropout)
    straight.train()

    saving, _, _ = spectral_trainer(tmp_path / "b", name, settings, dropout,
                                    save_strategy="steps", save_steps=3)
    saving.train()
    checkpoint = tmp_path / "b" / "checkpoint-3"
    assert (checkpoint / METHOD_STATE_NAME).is_file() and (checkpoint / "optimizer.pt").is_file()
    for later in ("checkpoint-6", "checkpoint-8"):
        shutil.rmtree(tmp_path / "b" / later)

    resumed, method_c, model_c = spectral_trainer(tmp_path / "b", name, settings, dropout,
                                                  save_strategy="steps", save_steps=3)
    loaded = []
    load = method_c.load_state_dict
    method_c.load_state_dict = lambda state: (loaded.append(state["step"]), load(state))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert loaded == [3]
    assert method_c.state_dict() == method_a.state_dict()
    a, c = _weights(model_a), _weights(model_c)
    assert a.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], c[key]), key


def test_resume_from_a_checkpoint_without_method_state_fails(tmp_path):
    trainer, _, _ = spectral_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    (tmp_path / "checkpoint-2" / METHOD_STATE_NAME).unlink()
    again, _, _ = spectral_trainer(tmp_path, max_steps=4)
    with pytest.raises(FileNotFoundError, match=METHOD_STATE_NAME):
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


# --------------------------------------------------------------------------- misuse
@pytest.mark.parametrize("name, settings", [("sst", SST), ("relora", {"rank": 4})])
def test_a_stock_trainer_on_a_converted_model_is_stopped(tmp_path, name, settings):
    method = make_method(name, **settings)
    model = method.prepare(gpt2())
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=TokenBlocks())
    with pytest.raises(MethodGuardError, match=r"sparse_spectral\.training\.hf"):
        trainer.train()
    assert trainer.state.global_step <= 3


def test_unprepared_models_and_a_foreign_optim_are_refused(tmp_path):
    method = make_method("sst", **SST)
    with pytest.raises(ValueError, match="method.prepare"):
        SpectralTrainer(method=method, model=gpt2(), args=arguments(tmp_path),
                        train_dataset=TokenBlocks())
    model = method.prepare(gpt2())
    with pytest.raises(ValueError, match="optim='adafactor'"):
        SpectralTrainer(method=method, model=model, args=arguments(tmp_path, optim="adafactor"),
                        train_dataset=TokenBlocks())
    with pytest.raises(ValueError, match="twice"):
        SpectralTrainer(method=method, model=model, args=arguments(tmp_path),
                        train_dataset=TokenBlocks(), callbacks=[SpectralCallback(method)])


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, sparse_spectral; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
