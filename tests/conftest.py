"""Shared fixtures: tiny models built from configs (no download), fixed thread count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

# LAPACK's SVD differs in its last bits across thread counts (SPEC section 9); exactness
# tests compare runs made in this one process, at one thread count.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def reference_data_dir(marker: str) -> Path | None:
    """``$SST_DATA_DIR`` or ``../shared/data`` from the project root, if it holds ``marker``."""
    project = Path(__file__).resolve().parents[1]
    for root in (os.environ.get("SST_DATA_DIR"), project / ".." / "shared" / "data"):
        if root and (Path(root) / marker).exists():
            return Path(root).resolve()
    return None


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The reference data folder (CI points at ``../shared/data``); a clear failure if absent."""
    found = reference_data_dir("README.md")
    if found is None:
        pytest.fail("reference data not found: set SST_DATA_DIR or provide ../shared/data")
    return found


class TinyMLP(nn.Module):
    """Nested MLP: two blocks of linear layers and a dense head."""

    def __init__(self, d_in: int = 12, width: int = 16, d_out: int = 5):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"fc": nn.Linear(d_in if i == 0 else width, width), "act": nn.GELU()})
            for i in range(2)
        )
        self.proj = nn.Linear(width, width // 2, bias=False)
        self.head = nn.Linear(width // 2, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block["act"](block["fc"](x))
        return self.head(self.proj(x))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(
        vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32))


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


HF_MODELS = {"llama": tiny_llama, "opt": tiny_opt, "gpt2": tiny_gpt2}


@pytest.fixture
def mlp() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP()


def token_batch(seed: int = 0, batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))
