"""HyboNet's Lorentz Transformer: the hyperboloid, attention, masks, logits, methods, training.

"On the hyperboloid" is measured as in tests/test_hyperbolic.py: ``|<x, x>_L + k| <=
tol * max(k, x_0^2)`` with tol 1e-5 (float32) or 1e-10 (float64).
"""

from __future__ import annotations

import itertools
import math

import geoopt
import pytest
import torch
from geoopt.manifolds.lorentz import math as gmath
from torch.nn import functional as F

from sparse_spectral import make_method
from sparse_spectral.hyperbolic import (
    CombinedOptimizer,
    HyboNetRiemannianAdam,
    LorentzLinearMT,
    build_hyperbolic_optimizer,
    check_point,
    expmap0,
    manifold_parameters,
)
from sparse_spectral.methods.galore_optim import GaLoreAdamW
from sparse_spectral.models.decoding import beam_search, greedy_search, length_penalty
from sparse_spectral.models.lorentz_transformer import (
    LORENTZ_TRANSFORMER_TARGETS,
    LorentzTransformerConfig,
    LorentzTranslationTransformer,
    inner_linear_names,
)
from sparse_spectral.spectral import SlotAdamW
from sparse_spectral.spectral.optim import find_state
from sparse_spectral.targeting import find_target_modules

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
PAD, BOS, EOS, VOCAB = 0, 1, 2, 12
D, HEADS = 16, 4
CASES = {
    "full": {},
    "lora": {"rank": 2},
    "relora": {"rank": 3, "merge_interval": 2},
    "galore": {"rank": 4, "update_proj_gap": 2, "scale": 1.0},
    "sst": {"rank": 4, "iteration_interval": 2},
}


def on_hyperboloid(x: torch.Tensor, k: float = 1.0, dtype=torch.float32) -> bool:
    scale = (x.detach()[..., 0] ** 2).clamp_min(k)
    return bool((check_point(x.detach(), k) / scale).max() <= TOL[dtype])


def build(seed: int = 0, **overrides) -> LorentzTranslationTransformer:
    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, pad_id=PAD, d_model=D, num_heads=HEADS,
                    num_encoder_layers=2, num_decoder_layers=2, max_positions=16)
    return LorentzTranslationTransformer(LorentzTransformerConfig(**{**settings, **overrides}))


def ids(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def copy_batch(rows: int, gen: torch.Generator, length: int = 5):
    """Copy task: source ``w <eos>``, decoder input ``<bos> w``, target ``w <eos>``."""
    body = torch.randint(3, VOCAB, (rows, length), generator=gen)
    eos, bos = torch.full((rows, 1), EOS), torch.full((rows, 1), BOS)
    return torch.cat([body, eos], 1), torch.cat([bos, body], 1), torch.cat([body, eos], 1)


def nll(model, batch) -> torch.Tensor:
    logits = model(batch[0], batch[1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[2].reshape(-1), ignore_index=PAD)


# --------------------------------------------------------------------------- hyperboloid
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("residual", ["code", "paper"])
def test_every_point_after_encoder_layers_and_a_decoder_step_is_on_the_hyperboloid(dtype,
                                                                                   residual):
    model = build(residual=residual).to(dtype).eval()
    outputs = []
    for module in model.modules():  # every LorentzLinear (per head), block and stack output
        if isinstance(module, LorentzLinearMT) or type(module).__name__.endswith(
                ("EncoderLayer", "DecoderLayer", "Encoder", "Decoder")):
            module.register_forward_hook(lambda m, i, out: outputs.append((m, out)))
    src = ids(3, 7, 0)
    src[0, 5:] = PAD
    memory, src_mask = model.encode(src)
    # per layer 6 LorentzLinears (encoder) or 10 (decoder), plus embedding, layers, stack
    encoder_count = 2 * 6 + 1 + 2 + 1
    assert len(outputs) == encoder_count
    prefix = torch.cat([torch.full((3, 1), BOS), ids(3, 3, 1)], 1)
    logits = model.decode(prefix, memory, src_mask, last_only=True)
    assert logits.shape == (3, 1, VOCAB)
    assert len(outputs) == encoder_count + 2 * 10 + 1 + 2 + 1
    for module, out in outputs:
        assert torch.isfinite(out).all(), module
        assert on_hyperboloid(out, dtype=dtype), module
    heads = [out for m, out in outputs
             if isinstance(m, LorentzLinearMT) and m.heads and not m.merge]
    assert heads and all(out.shape[-2:] == (HEADS, D // HEADS) for out in heads)
    # the attention context (per-head centroid) is on the head hyperboloid too
    attn = model.decoder.layers[1].cross_attn
    context, _ = attn.attend(model.decoder.embed(prefix), memory, src_mask[:, None, None, :])
    assert context.shape == (3, 4, HEADS, D // HEADS) and on_hyperboloid(context, dtype=dtype)


def test_lorentz_linear_mt_init_residual_and_heads_follow_hybonet():
    torch.manual_seed(0)
    qkv = LorentzLinearMT(64, 64, heads=4)
    merge = LorentzLinearMT(64, 64, bias=False, heads=4, merge=True)
    ffn_out = LorentzLinearMT(256, 64)
    for layer, zeroed in ((qkv, [0, 16, 32, 48]), (merge, [0, 16, 32, 48]), (ffn_out, [0])):
        w = layer.linear.weight
        assert w.abs().max() <= 0.02
        assert [c for c in range(w.shape[1]) if not w[:, c].any()] == zeroed
        assert layer.scale.item() == pytest.approx(2.3)
    assert merge.linear.bias is None and not qkv.linear.bias.any()
    assert torch.linalg.matrix_rank(qkv.linear.weight).item() == 60  # reference section 5.2
    gen = torch.Generator().manual_seed(0)
    x = expmap0(torch.cat([torch.zeros(5, 1), torch.randn(5, 63, generator=gen)], 1))
    r = expmap0(torch.cat([torch.zeros(5, 1), torch.randn(5, 63, generator=gen)], 1))
    # merge: (..., H, d_h) flattened, then the map; "code": residual enters the time logit
    y = merge.linear(x) + r
    t = y[:, :1].sigmoid() * math.exp(2.3) + 1.1
    expected = torch.cat([t, y[:, 1:] * ((t * t - 1) / y[:, 1:].pow(2).sum(1, True)).sqrt()], 1)
    torch.testing.assert_close(merge(x.view(5, 4, 16), residual=r), expected)
    # "paper" (Eq. 7): time from the map alone, residual in the space part only
    paper = LorentzLinearMT(64, 64, bias=False, heads=4, merge=True, residual="paper")
    paper.load_state_dict(merge.state_dict())
    y = merge.linear(x)
    t = y[:, :1].sigmoid() * math.exp(2.3) + 1.1
    s = y[:, 1:] + r[:, 1:]
    torch.testing.assert_close(paper(x.view(5, 4, 16), residual=r),
                               torch.cat([t, s * ((t * t - 1) / s.pow(2).sum(1, True)).sqrt()], 1))
    # split heads: each 16-slice normalised on its own
    out = qkv(x)
    assert out.shape == (5, 4, 16) and on_hyperboloid(out)
    # official MT version: no floor on |y_s|^2 (all-zero space -> non-finite); space_eps floors
    zero = torch.zeros(2, 256)
    assert not torch.isfinite(ffn_out(zero)).all()
    floored = LorentzLinearMT(256, 64, space_eps=1e-8)
    assert torch.isfinite(floored(zero)).all()


def test_iwslt_shape_has_hybonets_98_inner_matrices_and_init_ranks():
    """reference/hybonet.md section 5.2: d 64, H 4, d_ff 256, 6 + 6 layers."""
    model = build(d_model=64, num_encoder_layers=6, num_decoder_layers=6, d_ff=256)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == 98
    assert sum(m.weight.numel() for m in linears.values()) == 696_320
    ranks = {}
    for name, m in linears.items():
        role = name.split(".")[-2]
        ranks.setdefault(role, set()).add(torch.linalg.matrix_rank(m.weight).item())
    assert ranks == {"q_proj": {60}, "k_proj": {60}, "v_proj": {60}, "out_proj": {60},
                     "fc1": {63}, "point": {63}, "fc2": {64}}
    assert all(linears[n].bias is None for n in linears if ".out_proj." in n)
    assert sum(linears[n].bias is not None for n in linears) == 98 - 6 - 12


# --------------------------------------------------------------------------- attention
def test_attention_scores_are_negative_squared_distances_and_weights_sum_to_one():
    model = build().eval()
    attn = model.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.scale.fill_(3.0)
        attn.bias.fill_(0.7)
    x = model.encoder.embed(ids(2, 6, 3))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    _, weights = attn.attend(x, x, mask)
    assert weights.shape == (2, HEADS, 6, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, 6))
    assert (weights[1, ..., 4:] == 0).all()
    # reference: geoopt's geodesic distance d; -d^2_L = -(2 cosh d - 2); sigma 3, beta 0.7
    q = attn.q_proj(x).transpose(1, 2)
    k = attn.k_proj(x).transpose(1, 2)
    dist = gmath.dist(q.unsqueeze(-2), k.unsqueeze(-3), k=torch.tensor(1.0))
    scores = -(2 * torch.cosh(dist.double()) - 2) / 3.0 + 0.7
    scores = scores.masked_fill(~mask, -math.inf)
    torch.testing.assert_close(weights.double(), scores.softmax(-1), rtol=1e-4, atol=1e-5)
    assert attn.scale.shape == (1,) and build().encoder.layers[0].self_attn.scale.item() == 4.0


# --------------------------------------------------------------------------- masks
def test_source_padding_changes_nothing_at_real_positions():
    model = build().eval()
    src = ids(2, 5, 4)
    tgt = torch.cat([torch.full((2, 1), BOS), ids(2, 4, 5)], 1)
    padded = torch.cat([src, torch.full((2, 3), PAD)], 1)
    memory, mask = model.encode(src)
    memory_p, mask_p = model.encode(padded)
    assert mask_p[:, 5:].eq(False).all() and mask_p[:, :5].all()
    torch.testing.assert_close(memory_p[:, :5], memory, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.decode(tgt, memory_p, mask_p), model.decode(tgt, memory, mask),
                               rtol=1e-5, atol=1e-4)
    # a different sentence in the padded slots would change the outputs: the mask is what hides them
    other = padded.clone()
    other[:, 5:] = 7
    assert not torch.allclose(model.encode(other)[0][:, :5], memory, atol=1e-3)


def test_decoder_is_causal_and_ignores_target_padding():
    model = build().eval()
    memory, mask = model.encode(ids(2, 6, 6))
    tgt = torch.cat([torch.full((2, 1), BOS), ids(2, 5, 7)], 1)
    changed = tgt.clone()
    changed[:, 4] = torch.where(tgt[:, 4] == 3, 4, 3)
    logits, logits_changed = model.decode(tgt, memory, mask), model.decode(changed, memory, mask)
    torch.testing.assert_close(logits_changed[:, :4], logits[:, :4])
    assert not torch.allclose(logits_changed[:, 4:], logits[:, 4:], atol=1e-3)
    # a decoding step on the prefix equals the full pass at that position
    step = model.decode(tgt[:, :3], memory, mask, last_only=True)
    torch.testing.assert_close(step[:, 0], logits[:, 2], rtol=1e-5, atol=1e-4)
    # right padding of the decoder input: earlier positions unchanged
    padded = torch.cat([tgt, torch.full((2, 2), PAD)], 1)
    torch.testing.assert_close(model.decode(padded, memory, mask)[:, :6], logits,
                               rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- logits
def test_logits_are_negative_squared_distances_to_a_separate_table_plus_bias():
    model = build().eval()
    gen = model.generator
    assert isinstance(gen.weight, geoopt.ManifoldParameter)
    assert gen.weight is not model.decoder.embed.weight  # HyboNet: a deep copy ...
    torch.testing.assert_close(gen.weight.detach(), model.decoder.embed.weight.detach())  # at init
    with torch.no_grad():
        gen.bias.copy_(torch.linspace(-1, 1, VOCAB))
    src, tgt = ids(2, 5, 8), torch.cat([torch.full((2, 1), BOS), ids(2, 3, 9)], 1)
    logits = model(src, tgt)
    assert logits.shape == (2, 4, VOCAB)
    memory, mask = model.encode(src)
    y = model.decoder(tgt, memory, mask[:, None, None, :])
    dist = gmath.dist(y.unsqueeze(-2).double(), gen.weight.double(), k=torch.tensor(1.0))
    expected = -(2 * torch.cosh(dist) - 2) + gen.bias.double()
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-3)
    tied = build(tie_embeddings=True)
    assert tied.generator.weight is tied.decoder.embed.weight
    assert len(manifold_parameters(tied)) == 2 and len(manifold_parameters(model)) == 3


def test_bad_settings_name_the_value():
    for bad, match in ((dict(num_heads=3), "num_heads=3"), (dict(num_heads=16), "num_heads=16"),
                       (dict(residual="both"), "residual='both'"), (dict(pad_id=12), "pad_id=12"),
                       (dict(attention_dropout=1.0), "attention_dropout=1.0"),
                       (dict(space_eps=-1.0), "space_eps=-1.0"), (dict(k=0), "k=0")):
        with pytest.raises(ValueError, match=match):
            build(**bad)
    with pytest.raises(ValueError, match="exceeds max_positions=16"):
        build().encode(ids(1, 17, 0))
    with pytest.raises(ValueError, match="heads=3 must divide out_features=64"):
        LorentzLinearMT(64, 64, heads=3)
    with pytest.raises(ValueError, match="merge=True needs heads >= 1"):
        LorentzLinearMT(64, 64, merge=True)


# --------------------------------------------------------------------------- every method
def targeted_names(method, model) -> list[str]:
    if hasattr(method, "layers"):
        return [name for name, _ in method.layers]
    if hasattr(method, "target_names"):
        return list(method.target_names)
    return [name for name, _ in find_target_modules(model, method.config.target_modules)]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("targets", ["all-linear", LORENTZ_TRANSFORMER_TARGETS])
def test_every_method_targets_every_inner_linear_and_never_a_manifold_table(name, targets):
    reference = build()
    model = build()
    inner = inner_linear_names(model)
    assert len(inner) == 2 * 6 + 2 * 10 + 2 and all(n.endswith(".linear") for n in inner)
    tables = {n: p.detach().clone() for n, p in model.named_parameters()
              if isinstance(p, geoopt.ManifoldParameter)}
    assert sorted(tables) == ["decoder.embed.weight", "encoder.embed.weight", "generator.weight"]
    method = make_method(name, target_modules=targets, **CASES[name])
    model = method.prepare(model)
    assert targeted_names(method, model) == inner
    src, tgt = ids(2, 5, 10), torch.cat([torch.full((2, 1), BOS), ids(2, 3, 11)], 1)
    torch.testing.assert_close(model.eval()(src, tgt), reference.eval()(src, tgt),
                               rtol=1e-5, atol=1e-4)
    params = dict(model.named_parameters())
    for pname, value in tables.items():
        assert isinstance(params[pname], geoopt.ManifoldParameter) and params[pname].requires_grad
        torch.testing.assert_close(params[pname].detach(), value, rtol=0, atol=0)
    optimizer = build_hyperbolic_optimizer(model, method, lr=1e-3)
    method_opt, riemannian = optimizer.optimizers
    assert type(method_opt) is (GaLoreAdamW if name == "galore" else SlotAdamW)
    assert type(riemannian) is HyboNetRiemannianAdam
    held = {id(p) for g in method_opt.param_groups for p in g["params"]}
    manifold = {id(p) for p in manifold_parameters(model)}
    assert [p for g in riemannian.param_groups for p in g["params"]] == manifold_parameters(model)
    assert not held & manifold
    assert held | manifold == {id(p) for p in model.parameters() if p.requires_grad}


def test_combined_optimizer_is_one_torch_optimizer_for_schedulers_and_checkpoints():
    model = build()
    method = make_method("sst", rank=4, iteration_interval=2)
    model = method.prepare(model)
    optimizer = build_hyperbolic_optimizer(model, method, lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 ** t)
    batch = copy_batch(4, torch.Generator().manual_seed(0))
    for step in (1, 2):
        nll(model, batch).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        method.after_step(step, optimizer)
    for member in optimizer.optimizers:  # the schedule reached both members
        assert all(g["lr"] == pytest.approx(0.0025) for g in member.param_groups)
    layer = method.layers[0][1]
    assert find_state(optimizer, layer.s) is optimizer.optimizers[0].state[layer.s]
    table = model.generator.weight
    assert optimizer.state[table] is optimizer.optimizers[1].state[table]
    assert len(optimizer.state) == sum(len(o.state) for o in optimizer.optimizers)
    fresh = build_hyperbolic_optimizer(model, method, lr=0.01)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh, lambda t: 0.5 ** t)
    fresh.load_state_dict(optimizer.state_dict())
    fresh_scheduler.load_state_dict(scheduler.state_dict())
    torch.testing.assert_close(fresh.state[table]["exp_avg"], optimizer.state[table]["exp_avg"])
    fresh_scheduler.step()  # after loading, the scheduler still drives the members' groups
    assert fresh.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.00125)
    with pytest.raises(ValueError, match="state holds 1 optimizers"):
        fresh.load_state_dict({"optimizers": [optimizer.state_dict()["optimizers"][0]]})
    with pytest.raises(ValueError, match="at least one optimizer"):
        CombinedOptimizer(None)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["full", "sst"])
def test_tiny_copy_task_training_lowers_validation_loss(name):
    model = build(num_encoder_layers=1, num_decoder_layers=1, num_heads=2,
                  attention_dropout=0.0, position_dropout=0.0)
    method = make_method(name, **({"rank": 4, "iteration_interval": 10} if name == "sst" else {}))
    model = method.prepare(model)
    optimizer = build_hyperbolic_optimizer(model, method, lr=0.01)
    val = copy_batch(64, torch.Generator().manual_seed(99))

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return nll(model, val).item()

    before = val_loss()
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 41):
        model.train()
        optimizer.zero_grad()
        nll(model, copy_batch(32, gen)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # HyboNet's max_grad_norm
        optimizer.step()
        method.after_step(step, optimizer)
    after = val_loss()
    # lower than at the start, and better than a uniform guess over the vocabulary
    assert after < before and after < math.log(VOCAB), (before, after)
    for p in manifold_parameters(model):
        assert on_hyperboloid(p)
    memory, mask = model.encode(val[0])
    assert on_hyperboloid(memory) and on_hyperboloid(model.decoder(val[1], memory,
                                                                   mask[:, None, None, :]))


# --------------------------------------------------------------------------- decoding
@torch.no_grad()
def _best_by_brute_force(model, src_row: torch.Tensor, max_len: int, alpha: float) -> list[int]:
    """Best ``score / lp(L)`` over every word sequence closed by <eos>, ``L <= max_len``."""
    words = [i for i in range(model.config.vocab_size) if i not in (PAD, BOS, EOS)]
    best, best_score = None, -math.inf
    for length in range(1, max_len + 1):
        for seq in itertools.product(words, repeat=length - 1):
            logp = torch.log_softmax(model(src_row[None], torch.tensor([[BOS, *seq]]))[0], -1)
            score = float(sum(logp[i, t] for i, t in enumerate([*seq, EOS])))
            if score / length_penalty(length, alpha) > best_score:
                best, best_score = list(seq), score / length_penalty(length, alpha)
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_greedy_and_beam_search_decode_the_lorentz_model(alpha):
    """Greedy equals beam 1; a beam of 9 over 3 words and <= 3 tokens is exhaustive."""
    model = build(seed=5, vocab_size=6).eval()
    src = torch.tensor([[3, 4, EOS], [5, EOS, PAD]])
    common = dict(bos_id=BOS, eos_id=EOS, banned=(PAD, BOS), max_len_a=0.0, max_len_b=3)
    greedy = greedy_search(model, src, **common)
    assert greedy == beam_search(model, src, beam_size=1, alpha=alpha, **common)
    found = beam_search(model, src, beam_size=9, alpha=alpha, **common)
    for b in range(2):
        assert found[b] == _best_by_brute_force(model, src[b, :int(src[b].ne(PAD).sum())], 3,
                                                alpha)
