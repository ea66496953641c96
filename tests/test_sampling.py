"""Tests for sparse_spectral.spectral.sampling (SPEC sections 3 and 9).

The samplers choose which r singular-vector pairs train during an iteration. The weighted
sampler draws r distinct indices from ``p_i = (1 - lam) s_i / sum(s) + lam / k``; uniform,
sequential (cyclic) and top-r are the ablation's alternatives. Every draw is a pure function
of a counter key, so it is reproducible without any generator state.

The statistical tests use fixed keys, so they are deterministic (never flaky); the
thresholds are chosen so that a correct sampler passes with a wide margin and a sampler
with the wrong distribution fails.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sparse_spectral.spectral.sampling import (
    SAMPLERS,
    counter_seed,
    iterations_per_round,
    sampling_probabilities,
    select_indices,
)

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

# Upper 0.999 quantile of the standard normal distribution.
Z_999 = 3.090232306167813

# Tabulated 0.999 quantiles of the chi-square distribution (e.g. NIST/SEMATECH
# e-Handbook of Statistical Methods, table 1.3.6.7.4), used to validate the
# Wilson-Hilferty approximation below.
CHI2_999_TABLE = {4: 18.467, 7: 24.322, 9: 27.877}


def chi2_quantile_wilson_hilferty(df: int, z: float = Z_999) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile with ``df`` degrees of freedom."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_critical(df: int) -> float:
    """0.999 quantile: the table value where known, otherwise Wilson-Hilferty."""
    return CHI2_999_TABLE.get(df, chi2_quantile_wilson_hilferty(df))


def chi2_statistic(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic ``sum (O - E)^2 / E`` for observed counts and cell probabilities."""
    counts = counts.to(torch.float64)
    expected = probs.to(torch.float64) * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def draw_counts(sampler: str, s: torch.Tensor, r: int, n_draws: int, lam: float = 0.0,
                seed: int = 0, layer: int = 0) -> torch.Tensor:
    """How often each index was selected over ``n_draws`` iterations (distinct keys)."""
    counts = torch.zeros(s.numel(), dtype=torch.int64)
    for it in range(n_draws):
        idx = select_indices(sampler, s, r, key=(seed, layer, it), lam=lam)
        counts[idx] += 1
    return counts


def successive_inclusion_probabilities(p: list[float], r: int) -> list[float]:
    """Exact inclusion probabilities of r draws without replacement (successive sampling).

    Draw index i with probability proportional to ``p_i`` among those not yet drawn,
    r times. Enumerates every ordered sequence, so only for small k.
    """
    k = len(p)
    incl = [0.0] * k
    for seq in itertools.permutations(range(k), r):
        prob, left = 1.0, 1.0
        for i in seq:
            prob *= p[i] / left
            left -= p[i]
        for i in seq:
            incl[i] += prob
    return incl


def test_chi2_critical_values_are_sane():
    """The Wilson-Hilferty approximation agrees with the tabulated quantiles within 2%."""
    for df, table in CHI2_999_TABLE.items():
        assert chi2_quantile_wilson_hilferty(df) == pytest.approx(table, rel=0.02)


# --------------------------------------------------------------------------
# Weighted sampling: frequencies
# --------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_weighted_r1_frequencies_follow_weights_chi_square(lam):
    """With r = 1, index i is drawn with probability (1 - lam) s_i / sum(s) + lam / k."""
    s = torch.tensor([0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
    k, n = s.numel(), 4000
    expected_p = [(1 - lam) * float(v) / float(s.sum()) + lam / k for v in s]
    probs = torch.tensor(expected_p, dtype=torch.float64)
    counts = draw_counts("weighted", s, 1, n, lam=lam)
    assert int(counts.sum()) == n
    crit = chi2_critical(k - 1)
    stat = chi2_statistic(counts, probs)
    assert stat < crit, f"chi2={stat:.2f} >= {crit:.2f}; counts={counts.tolist()}"
    # The statistic has power: the same counts are clearly incompatible with uniform
    # (lam=0.5) or with the opposite (lam=0) mix.
    wrong = torch.full((k,), 1.0 / k, dtype=torch.float64) if lam == 0.0 else (
        s.to(torch.float64) / s.sum())
    assert chi2_statistic(counts, wrong) > 10 * crit


def test_weighted_without_replacement_inclusion_is_monotone_and_matches_theory():
    """r > 1: larger s_i are included more often, in line with successive sampling."""
    s = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    r, n = 2, 3000
    counts = draw_counts("weighted", s, r, n)
    assert int(counts.sum()) == n * r
    freq = counts.to(torch.float64) / n
    # Monotone: well separated weights give strictly increasing inclusion frequencies.
    assert torch.all(freq[1:] > freq[:-1]), freq.tolist()
    # Every index, even the one with the smallest (positive) weight, shows up.
    assert torch.all(counts > 0), counts.tolist()
    # Agreement with the exact inclusion probabilities (5 binomial standard errors).
    p = (s / s.sum()).tolist()
    exact = torch.tensor(successive_inclusion_probabilities(p, r), dtype=torch.float64)
    assert float(exact.sum()) == pytest.approx(r)
    se = torch.sqrt(exact * (1 - exact) / n)
    assert torch.all((freq - exact).abs() < 5 * se), (freq.tolist(), exact.tolist())


def test_weighted_every_index_appears_with_small_positive_weight():
    """Exploration: a vector with a small but positive weight is still visited."""
    s = torch.tensor([0.05, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    counts = draw_counts("weighted", s, 3, 1500)
    assert torch.all(counts > 0), counts.tolist()
    assert counts[0] < counts[1:].min()


# --------------------------------------------------------------------------
# lam mixing and degenerate singular values
# --------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampling_probabilities_formula(lam, dtype):
    """p = (1 - lam) s / sum(s) + lam / k, in float64, summing to one."""
    s = torch.tensor([3.0, 0.5, 0.0, 2.0, 1.5, 7.0], dtype=dtype)
    s_before = s.clone()
    k = s.numel()
    s64 = s.to(torch.float64)
    expected = (1.0 - lam) * (s64 / s64.sum()) + lam / k
    p = sampling_probabilities(s, lam)
    assert p.dtype == torch.float64 and p.shape == (k,)
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-15)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(s, s_before)  # input untouched


def test_sampling_probabilities_lam_one_is_uniform():
    s = torch.tensor([10.0, 0.0, 1.0, 0.1])
    torch.testing.assert_close(sampling_probabilities(s, 1.0),
                               torch.full((4,), 0.25, dtype=torch.float64), rtol=0, atol=0)


def test_zero_singular_values_get_zero_probability_with_lam_zero():
    s = torch.tensor([0.0, 3.0, 0.0, 0.0, 1.0, 0.0])
    p = sampling_probabilities(s, 0.0)
    assert torch.equal(p == 0, s == 0)
    torch.testing.assert_close(p[[1, 4]], torch.tensor([0.75, 0.25], dtype=torch.float64))
    # Never drawn while enough positive entries exist.
    for it in range(50):
        idx = select_indices("weighted", s, 2, key=(0, 0, it))
        assert idx.tolist() == [1, 4]
        idx1 = select_indices("weighted", s, 1, key=(0, 0, it))
        assert idx1.item() in (1, 4)


@pytest.mark.parametrize("r", [3, 4, 6])
def test_fewer_positive_than_r_fills_from_zero_weight(r):
    """Only 2 positive singular values, r > 2: both are taken, the rest filled from zeros."""
    s = torch.tensor([0.0, 3.0, 0.0, 0.0, 1.0, 0.0])
    seen_fill = set()
    for it in range(30):
        idx = select_indices("weighted", s, r, key=(1, 2, it))
        assert idx.dtype == torch.int64 and idx.shape == (r,)
        assert idx.unique().numel() == r
        assert torch.equal(idx, idx.sort().values)
        assert {1, 4} <= set(idx.tolist())
        seen_fill |= set(idx.tolist()) - {1, 4}
    if r < 6:  # the fill is random, so over 30 keys every zero-weight index shows up
        assert seen_fill == {0, 2, 3, 5}


def test_all_zero_singular_values_give_uniform():
    s = torch.zeros(5)
    torch.testing.assert_close(sampling_probabilities(s, 0.0),
                               torch.full((5,), 0.2, dtype=torch.float64), rtol=0, atol=0)
    counts = draw_counts("weighted", s, 2, 500)
    assert int(counts.sum()) == 1000
    assert torch.all(counts > 100), counts.tolist()  # expectation 200 each


# --------------------------------------------------------------------------
# Uniform sampler
# --------------------------------------------------------------------------


@pytest.mark.parametrize("k,r", [(8, 3), (5, 5), (12, 1)])
def test_uniform_sampler_distinct_sorted_in_range(k, r):
    s = torch.linspace(10.0, 0.1, k)  # weights must be ignored
    for it in range(20):
        idx = select_indices("uniform", s, r, key=(3, 1, it))
        assert idx.dtype == torch.int64 and idx.shape == (r,)
        assert idx.unique().numel() == r
        assert torch.equal(idx, idx.sort().values)
        assert int(idx.min()) >= 0 and int(idx.max()) < k


def test_uniform_sampler_frequencies_are_uniform():
    """Inclusion frequencies r/k for every index, even when s is very unequal."""
    k, r, n = 8, 3, 2000
    s = torch.tensor([100.0, 50.0, 10.0, 5.0, 1.0, 0.5, 0.1, 0.0])
    counts = draw_counts("uniform", s, r, n)
    p = r / k
    se = math.sqrt(n * p * (1 - p))
    assert torch.all((counts.to(torch.float64) - n * p).abs() < 5 * se), counts.tolist()
    # r = 1: a proper chi-square goodness-of-fit test against uniform.
    counts1 = draw_counts("uniform", s, 1, 2000)
    stat = chi2_statistic(counts1, torch.full((k,), 1.0 / k, dtype=torch.float64))
    assert stat < chi2_critical(k - 1), counts1.tolist()


# --------------------------------------------------------------------------
# Sequential sampler
# --------------------------------------------------------------------------


@pytest.mark.parametrize("k,r", [(10, 4), (10, 3), (8, 2), (7, 7), (5, 1), (12, 5), (9, 8)])
def test_sequential_covers_every_index_in_one_round(k, r):
    t2 = iterations_per_round(k, r)
    assert t2 == math.ceil(k / r)
    assert (t2 - 1) * r < k <= t2 * r  # minimal: one iteration fewer could not cover
    s = torch.rand(k, generator=torch.Generator().manual_seed(k * 100 + r))
    covered = set()
    for it in range(t2):
        idx = select_indices("sequential", s, r, key=(0, 0, it), iteration_in_round=it)
        assert idx.dtype == torch.int64 and idx.shape == (r,)
        assert idx.unique().numel() == r
        assert torch.equal(idx, idx.sort().values)
        assert int(idx.min()) >= 0 and int(idx.max()) < k
        # Deterministic: independent of the key and of s, repeatable.
        again = select_indices("sequential", torch.ones(k), r, key=(9, 9, 9),
                               iteration_in_round=it)
        assert torch.equal(idx, again)
        covered |= set(idx.tolist())
    assert covered == set(range(k))


def test_sequential_windows_are_consecutive():
    """k=10, r=4: windows {0..3}, {4..7}, {8, 9, 0, 1}."""
    s = torch.ones(10)
    got = [select_indices("sequential", s, 4, key=(0,), iteration_in_round=i).tolist()
           for i in range(3)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 8, 9]]


# --------------------------------------------------------------------------
# Top-r sampler
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_top_r_picks_largest_with_ties_to_lower_index(dtype):
    s = torch.tensor([3.0, 1.0, 3.0, 2.0, 5.0, 3.0], dtype=dtype)
    assert select_indices("top-r", s, 1, key=(0,)).tolist() == [4]
    assert select_indices("top-r", s, 2, key=(0,)).tolist() == [0, 4]
    assert select_indices("top-r", s, 3, key=(0,)).tolist() == [0, 2, 4]
    assert select_indices("top-r", s, 4, key=(0,)).tolist() == [0, 2, 4, 5]
    assert select_indices("top-r", s, 5, key=(0,)).tolist() == [0, 2, 3, 4, 5]
    # Ignores the key.
    assert select_indices("top-r", s, 3, key=(7, 7, 7)).tolist() == [0, 2, 4]


@pytest.mark.parametrize("r", [1, 3, 7])
def test_top_r_matches_topk_on_distinct_values(r):
    s = torch.rand(16, generator=torch.Generator().manual_seed(5))
    expected = torch.topk(s, r).indices.sort().values
    assert torch.equal(select_indices("top-r", s, r, key=(0,)), expected)


def test_top_r_float64_distinct_values_not_merged_by_float32_cast():
    """Regression: top-r once cast s to float32 before sorting, turning distinct float64
    singular values into ties won by the lower (smaller) index."""
    s = torch.tensor([1.0, 1.0 + 1e-9, 0.5], dtype=torch.float64)
    assert select_indices("top-r", s, 1, key=(0,)).tolist() == [1]


# --------------------------------------------------------------------------
# Determinism and the counter seed
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["weighted", "uniform"])
def test_same_key_same_indices_different_iteration_different_draw(sampler):
    s = torch.linspace(0.1, 3.0, 64)
    r = 8
    draws = []
    for it in range(8):
        a = select_indices(sampler, s, r, key=(11, 3, it), lam=0.3)
        b = select_indices(sampler, s.clone(), r, key=(11, 3, it), lam=0.3)
        assert torch.equal(a, b)
        draws.append(tuple(a.tolist()))
    # Different iteration counters give different draws (C(64, 8) ~ 4e9 possible sets).
    assert len(set(draws)) == len(draws)
    # The layer index in the key matters too.
    other_layer = select_indices(sampler, s, r, key=(11, 4, 0), lam=0.3)
    assert tuple(other_layer.tolist()) != draws[0]


def test_sampling_does_not_touch_global_rng():
    """No hidden state: the global generator is neither consumed nor reseeded."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for sampler in SAMPLERS:
        select_indices(sampler, torch.rand(10, generator=torch.Generator().manual_seed(0)), 3,
                       key=(0, 0, 1))
    assert torch.equal(torch.rand(3), expected)


def test_counter_seed_range_and_sensitivity():
    keys = [(0,), (1,), (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (2**40, 7, 3),
            (-1, 5), (123, 456, 789)]
    seeds = [counter_seed(*key) for key in keys]
    for seed in seeds:
        assert isinstance(seed, int) and 0 <= seed < 2**63
    assert len(set(seeds)) == len(seeds)
    assert counter_seed(1, 2, 3) == counter_seed(1, 2, 3)
    assert counter_seed(1, 2) != counter_seed(2, 1)


def test_counter_seed_matches_published_splitmix64_vectors():
    """A single counter is one SplitMix64 output (top bit cleared).

    Reference values are the first outputs of Vigna's SplitMix64 generator, independently
    published: seed 0 -> 0xE220A8397B1DCDAF, seed 1234567 -> 6457827717110365317.
    Pinning them keeps checkpoints resumable across library versions.
    """
    assert counter_seed(0) == 0xE220A8397B1DCDAF & (2**63 - 1)
    assert counter_seed(1234567) == 6457827717110365317 & (2**63 - 1)


def test_counter_seed_and_draws_stable_across_processes():
    """Same seeds and same indices in a separate interpreter (different hash seed)."""
    script = textwrap.dedent("""
        import torch
        from sparse_spectral._util.seeding import counter_seed
        from sparse_spectral.spectral.sampling import select_indices
        print(counter_seed(0, 0, 0), counter_seed(42, 3, 17), counter_seed(2**62, 1))
        s = torch.linspace(0.1, 3.0, 32)
        print(select_indices("weighted", s, 5, key=(42, 3, 17), lam=0.2).tolist())
        print(select_indices("uniform", s, 5, key=(42, 3, 17)).tolist())
    """)
    # This interpreter runs with pytest's own (random) hash seed; the child gets a fixed one.
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    s = torch.linspace(0.1, 3.0, 32)
    here = "\n".join([
        f"{counter_seed(0, 0, 0)} {counter_seed(42, 3, 17)} {counter_seed(2**62, 1)}",
        str(select_indices("weighted", s, 5, key=(42, 3, 17), lam=0.2).tolist()),
        str(select_indices("uniform", s, 5, key=(42, 3, 17)).tolist()),
    ]) + "\n"
    assert proc.stdout == here


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_samplers_constant():
    assert set(SAMPLERS) == {"weighted", "uniform", "sequential", "top-r"}


def test_unknown_sampler_raises_naming_it():
    with pytest.raises(ValueError, match="bogus"):
        select_indices("bogus", torch.ones(5), 2, key=(0,))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("r", [0, -1, 6])
def test_bad_rank_raises_naming_r_and_k(sampler, r):
    with pytest.raises(ValueError, match=rf"r={r}.*k=5"):
        select_indices(sampler, torch.ones(5), r, key=(0,))
