"""What methods offer tasks and the CLI: run mapping, config metadata, restart factor, exclude.

Every registered method and variant goes through the same checks: ``method_for_run`` puts
rank, seed and the refresh interval into the right fields and refuses unknown options;
configs keep their field order and help texts; ``restart_factor`` is the old jagged-cosine
ramp; ``param_groups(exclude=...)`` leaves exactly the excluded parameters out.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import TinyMLP

from sparse_spectral.methods import (
    SST_VARIANTS,
    LowRankConfig,
    available_methods,
    make_method,
    method_config_class,
    method_config_fields,
    method_for_run,
    method_option_fields,
)
from sparse_spectral.training.schedules import (
    jagged_cosine_lambda,
    method_lr_lambda,
    warmup_cosine_lambda,
)

ALL = available_methods()
BASE = ("full", "lora", "relora", "galore", "apollo", "sst")
REFRESH = {"full": None, "lora": None, "relora": "merge_interval", "galore": "update_proj_gap",
           "apollo": "update_proj_gap", "apollo_mini": "update_proj_gap",
           "sst": "iteration_interval", **{v: "iteration_interval" for v in SST_VARIANTS}}

# dataclasses.fields order before LowRankConfig (checkpoints and method.json store to_dict()).
FIELD_ORDER = {
    "full": ["target_modules", "exclude_modules"],
    "galore": ["target_modules", "exclude_modules", "rank", "update_proj_gap", "scale",
               "proj_type"],
    "apollo": ["target_modules", "exclude_modules", "rank", "update_proj_gap", "apollo_scale",
               "scale_type", "norm_growth_limit", "seed"],
    "lora": ["target_modules", "exclude_modules", "rank", "alpha", "seed"],
    "relora": ["target_modules", "exclude_modules", "rank", "alpha", "seed", "merge_interval",
               "optimizer_reset", "reset_ratio", "restart_warmup_steps"],
    "sst": ["target_modules", "exclude_modules", "rank", "iteration_interval",
            "iterations_per_round", "sampler", "lam", "enhanced_gradient",
            "update_all_singular_values", "restart_warmup_steps", "init", "seed",
            "forward_mode", "stagger_resvd", "svd_dtype", "frozen_dtype",
            "singular_value_lr_scale"],
}


# ------------------------------------------------------------------ config classes
def test_every_method_and_variant_is_covered():
    assert set(REFRESH) == set(ALL)


@pytest.mark.parametrize("name", BASE)
def test_field_order_and_to_dict_order_are_unchanged(name):
    cls = method_config_class(name)
    assert [f.name for f in dataclasses.fields(cls)] == FIELD_ORDER[name]
    assert list(cls().to_dict()) == FIELD_ORDER[name]


@pytest.mark.parametrize("name", ALL)
def test_every_config_field_has_help(name):
    for f in dataclasses.fields(method_config_class(name)):
        text = f.metadata.get("help")
        assert isinstance(text, str) and len(text) > 10, (name, f.name)


@pytest.mark.parametrize("name", ALL)
def test_refresh_interval_field_names_a_field(name):
    cls = method_config_class(name)
    assert cls.refresh_interval_field == REFRESH[name]
    if cls.refresh_interval_field is not None:
        assert cls.refresh_interval_field in {f.name for f in dataclasses.fields(cls)}
    # a class attribute, not a config field: to_dict() does not carry it
    assert "refresh_interval_field" not in cls().to_dict()


def test_config_class_and_option_fields_of_a_variant():
    assert method_config_class("sst-uniform") is method_config_class("sst")
    assert method_option_fields("sst-uniform") == method_option_fields("sst") - {"sampler"}
    assert method_config_fields is method_option_fields  # the earlier name still works
    assert method_option_fields("full") == {"target_modules", "exclude_modules"}
    with pytest.raises(ValueError, match="unknown method 'lorax'"):
        method_config_class("lorax")


@pytest.mark.parametrize("name", ["lora", "relora", "galore", "apollo", "sst"])
def test_low_rank_configs_share_one_rank_check(name):
    cls = method_config_class(name)
    assert issubclass(cls, LowRankConfig)
    # A value of another type fails the field's type check, an int out of range the rank's.
    for bad, rule in ((0, ">= 1"), (-2, ">= 1"), (2.0, r"\(got float\)"),
                      (True, r"\(got bool\)"), ("4", r"\(got str\)")):
        with pytest.raises(ValueError, match=rf"^rank={bad!r} must be an int {rule}$"):
            cls(rank=bad)
    if "seed" in FIELD_ORDER[name]:
        for bad in (1.5, None, "0", False):
            with pytest.raises(ValueError, match=rf"^seed={bad!r} must be an int \(got \w+\)$"):
                cls(seed=bad)
    assert not issubclass(method_config_class("full"), LowRankConfig)


def test_the_galore_optimizer_checks_a_group_rank_with_the_same_message():
    from sparse_spectral.methods.galore_optim import GaLoreAdamW

    weight = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"^rank=0 must be an int >= 1$"):
        GaLoreAdamW([{"params": [weight], "rank": 0}])


# ------------------------------------------------------------------ method_for_run
@pytest.mark.parametrize("name", ALL)
def test_method_for_run_puts_rank_seed_and_interval_in_their_fields(name):
    method = method_for_run(name, rank=3, seed=11, interval=7)
    config, default = method.config, method_config_class(name)()
    fields, options = {f.name for f in dataclasses.fields(config)}, method_option_fields(name)
    for key, value in (("rank", 3), ("seed", 11)):
        if key in options:
            assert getattr(config, key) == value
        elif key in fields:  # a variant's preset (apollo_mini's rank 1) is kept
            assert getattr(config, key) == getattr(make_method(name).config, key), key
    refresh = REFRESH[name]
    for other in {"iteration_interval", "merge_interval", "update_proj_gap"} & fields:
        expected = 7 if other == refresh else getattr(default, other)
        assert getattr(config, other) == expected, other
    # nothing given: the config's defaults
    assert method_for_run(name).config == make_method(name).config


@pytest.mark.parametrize("name", ["relora", "galore", "apollo", "sst"])
def test_an_explicit_refresh_option_wins_over_the_interval(name):
    refresh = REFRESH[name]
    method = method_for_run(name, interval=7, **{refresh: 5})
    assert getattr(method.config, refresh) == 5


def test_options_reach_the_config_and_rank_seed_none_keep_defaults():
    method = method_for_run("relora", rank=None, seed=None, interval=4, reset_ratio=0.5,
                            optimizer_reset="random")
    assert (method.config.rank, method.config.seed) == (8, 0)
    assert (method.config.merge_interval, method.config.reset_ratio) == (4, 0.5)
    assert method.config.optimizer_reset == "random"


@pytest.mark.parametrize("name, options", [
    ("full", {"iteration_interval": 3}),
    ("lora", {"merge_interval": 3, "lam": 0.1}),
    ("galore", {"seed_of_nothing": 1}),
    ("sst-uniform", {"alpha": 2.0}),
])
def test_an_option_the_method_lacks_is_an_error_listing_its_fields(name, options):
    with pytest.raises(ValueError) as info:
        method_for_run(name, rank=2, interval=3, **options)
    message = str(info.value)
    assert f"method {name!r}" in message
    assert f"no setting(s) {sorted(options)}" in message
    allowed = [f.name for f in dataclasses.fields(method_config_class(name))]
    assert f"allowed: {sorted(allowed)}" in message


def test_variant_presets_are_kept_and_cannot_be_contradicted():
    method = method_for_run("sst-uniform", rank=4, seed=2, interval=3)
    assert method.config.sampler == "uniform" and method.variant == "sst-uniform"
    assert (method.config.rank, method.config.seed, method.config.iteration_interval) == (4, 2, 3)
    assert method_for_run("sst-uniform", sampler="uniform").config.sampler == "uniform"
    with pytest.raises(ValueError, match="variant 'sst-uniform' fixes"):
        method_for_run("sst-uniform", sampler="weighted")
    for variant, preset in SST_VARIANTS.items():
        config = method_for_run(variant, rank=2, interval=3).config
        assert all(getattr(config, k) == v for k, v in preset.items())


def test_bad_values_through_method_for_run_name_the_value():
    with pytest.raises(ValueError, match=r"iteration_interval \(T3\)=0 must be an int >= 1"):
        method_for_run("sst", interval=0)
    with pytest.raises(ValueError, match=r"merge_interval=0 must be an int >= 1"):
        method_for_run("relora", interval=0)
    with pytest.raises(ValueError, match=r"update_proj_gap=0 must be an int >= 1"):
        method_for_run("galore", interval=0)


# ------------------------------------------------------------------ learning rate
def _rewarming(name: str):
    if name == "relora":
        return make_method(name, merge_interval=6, restart_warmup_steps=3)
    return make_method(name, iteration_interval=6, restart_warmup_steps=3, stagger_resvd=False)


def _old_lr_lambda(method, total, warmup, min_ratio):
    """``TrainingMethod.lr_lambda`` as it was: jagged cosine for restarting re-warmers."""
    cycle, rewarm = method.restart_cycle(), getattr(method.config, "restart_warmup_steps", 0)
    if cycle and rewarm:
        return jagged_cosine_lambda(total, warmup, min_ratio, cycle, rewarm)
    return warmup_cosine_lambda(total, warmup, min_ratio)


@pytest.mark.parametrize("name", ["relora", "sst"])
def test_restart_factor_is_the_jagged_ramp_at_every_step(name):
    method = _rewarming(name)
    jagged = jagged_cosine_lambda(40, 0, 1.0, cycle_length=6, restart_warmup_steps=3)
    factors = [method.restart_factor(t) for t in range(40)]
    assert factors == [jagged(t) for t in range(40)]  # a flat envelope: exactly the ramp
    assert factors[:8] == [1.0] * 6 + [0.0, 1 / 3]
    assert factors[12:16] == [0.0, 1 / 3, 2 / 3, 1.0]


@pytest.mark.parametrize("name", ALL)
def test_restart_factor_is_exactly_one_without_rewarm_ups(name):
    method = make_method(name)
    assert all(method.restart_factor(t) == 1.0 for t in range(300))


@pytest.mark.parametrize("name", ALL)
def test_method_lr_lambda_is_the_old_lr_lambda_bit_for_bit(name):
    method = make_method(name, **({"iteration_interval": 5} if name.startswith("sst") else {}))
    for total, warmup, ratio in ((30, 4, 0.1), (12, 0, 1.0), (50, 10, 0.0)):
        new, old = method_lr_lambda(method, total, warmup, ratio), _old_lr_lambda(
            method, total, warmup, ratio)
        assert [new(t) for t in range(total + 3)] == [old(t) for t in range(total + 3)]


@pytest.mark.parametrize("name", ["relora", "sst"])
def test_method_lr_lambda_with_rewarm_ups_matches_the_old_one_to_the_last_bit(name):
    method = _rewarming(name)
    new, old = method_lr_lambda(method, 60, 5, 0.1), _old_lr_lambda(method, 60, 5, 0.1)
    for t in range(63):
        # envelope * (since / rewarm) against (envelope * since) / rewarm: one rounding apart
        assert new(t) == pytest.approx(old(t), rel=4e-16, abs=0), t
        if method.restart_factor(t) in (0.0, 1.0):
            assert new(t) == old(t)


# ------------------------------------------------------------------ param groups
def _prepared(name):
    torch.manual_seed(0)
    method = method_for_run(name, rank=2, exclude_modules=["head"])
    return method.prepare(TinyMLP()), method


def _excluded(model, method):
    """A dense bias, and some of the method's own parameters where it has any."""
    named = dict(model.named_parameters())
    chosen = [named["head.bias"]]
    if method.name == "sst":
        chosen += [method.layers[0][1].s, method.layers[-1][1].Vh_active]
    elif method.name in ("lora", "relora"):
        chosen.append(method.layers[0][1].lora_A)
    elif method.name in ("galore", "apollo"):
        chosen.append(named[f"{method.target_names[0]}.weight"])
    else:
        chosen.append(named["blocks.0.fc.weight"])
    return chosen


def _entries(groups):
    """Each group as (settings, [(param id, its per-parameter settings)])."""
    rows = []
    for group in groups:
        per_param = [k for k in ("slot_dims", "transposed") if k in group]
        params = [(id(p), tuple(group[k][i] for k in per_param))
                  for i, p in enumerate(group["params"])]
        settings = {k: v for k, v in group.items() if k not in ("params", *per_param)}
        rows.append((settings, params))
    return rows


@pytest.mark.parametrize("name", ALL)
def test_param_groups_exclude_leaves_exactly_those_out_in_the_same_order(name):
    model, method = _prepared(name)
    excluded = _excluded(model, method)
    skip = {id(p) for p in excluded}
    plain = _entries(method.param_groups(model, weight_decay=0.1))
    groups = method.param_groups(model, weight_decay=0.1, exclude=iter(excluded))  # any iterable
    held = [id(p) for g in groups for p in g["params"]]
    assert not skip & set(held) and len(held) == len(set(held))
    expected = [(s, [e for e in params if e[0] not in skip]) for s, params in plain]
    # a dense group left empty is dropped, as param_groups always drops empty dense groups
    expected = [(s, params) for s, params in expected
                if params or s["name"] not in ("decay", "no_decay")]
    assert _entries(groups) == expected
    optimizer = method.build_optimizer(model, lr=1e-3, exclude=excluded)
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == [
        [id(p) for p in g["params"]] for g in groups]
    # exclude does not freeze: another optimizer trains these
    assert all(p.requires_grad for p in excluded)


# ------------------------------------------------------------------ hooks for tasks
@pytest.mark.parametrize("name", ALL)
def test_pruning_hooks(name):
    model, method = _prepared(name)
    assert method.supports_pruning_curve == (name in ("full", "sst"))  # variants: no
    view = method.pruning_view(model)
    if method.name == "sst":
        assert view is model
    else:
        assert view is not model
        assert not getattr(method, "converted_layers", lambda m: [])(view)  # dense layers


def test_variant_is_recorded_but_not_saved():
    method = make_method("sst-mix")
    assert method.variant == "sst-mix" and make_method("sst").variant is None
    assert "variant" not in method.state_dict()


def test_methods_do_not_import_the_training_package():
    """The layering: _util, linear <- spectral <- methods <- training <- tasks."""
    folder = Path(__file__).resolve().parents[1] / "src" / "sparse_spectral" / "methods"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not module.startswith(("..training", "sparse_spectral.training",
                                              "..tasks")), (path.name, module)
