"""Hypothesis property tests of the settings and ``make_method``.

Property: any mapping of settings fields (any task, any field, values of any JSON-ish type,
method options right or misspelt) either builds, checks included, or raises one
``ValueError`` naming a key or value it was given; the same for ``make_method`` with any
keyword arguments. Never a bare ``TypeError``, ``AttributeError`` or ``KeyError``.
Derandomized (the same examples on every run, no example database written), so CI sees
no flakes; ``tests/test_settings_fuzz.py`` adds seeded fuzzing with larger counts.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_settings_fuzz import _names_a_given_key, _option_defaults, build_settings

from sparse_spectral.methods import available_methods, make_method, method_config_class
from sparse_spectral.tasks.registry import available_tasks, get_task
from sparse_spectral.training.config import field_paths, flag_name

ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.sampled_from(["1e-2", "true", "false", "No", "all-linear", "0,2"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=2)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2))
PROPERTY = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _like(default):
    """Values of the default's own kind, near it (so that many inputs build)."""
    if isinstance(default, bool):
        return st.sampled_from([default, not default, "true", "false"])
    if isinstance(default, int):
        return st.integers(-2, max(2 * default, 4))
    if isinstance(default, float):
        return st.floats(-1.0, max(4 * default, 1.0))
    return st.just(default)


@st.composite
def settings_inputs(draw):
    """``(task, values, names)``: a settings mapping and the key and value texts it holds."""
    task = draw(st.sampled_from(available_tasks()))
    cls = get_task(task).settings_class
    defaults, paths = cls(), field_paths(cls)
    values, names = {}, set()
    chosen = draw(st.lists(st.sampled_from(sorted(set(paths) - {"options", "name"})),
                           min_size=1, max_size=4, unique=True))
    for name in chosen:
        section, f = paths[name]
        default = getattr(getattr(defaults, section), name) if section else getattr(defaults,
                                                                                     name)
        value = draw(st.one_of(_like(default), ANY))
        key = draw(st.sampled_from([name, flag_name(f)]))
        values[key] = value
        names |= {name, key, repr(value)}
    if draw(st.booleans()):
        options = _option_defaults()
        keys = st.sampled_from(sorted(options) + ["iteration_intervall", "rank", "seed"])
        chosen_options = draw(st.dictionaries(keys, ANY, max_size=2))
        values["method"] = {"options": chosen_options}
        names |= set(chosen_options) | {repr(v) for v in chosen_options.values()}
    return task, values, names


@pytest.mark.filterwarnings("ignore::FutureWarning")  # flat keys are deprecated, still read
@PROPERTY
@given(settings_inputs())
def test_any_settings_build_or_raise_one_clear_error(example):
    task, values, names = example
    try:
        build_settings(task, values, "property.toml")
    except ValueError as err:
        assert _names_a_given_key(str(err), names), (task, values, str(err))


@st.composite
def make_method_inputs(draw):
    name = draw(st.sampled_from(available_methods()))
    fields = {f.name: f.default for f in dataclasses.fields(method_config_class(name))
              if f.default is not dataclasses.MISSING}
    keys = st.sampled_from(sorted(fields) + ["bogus", "ranks", "lr"])
    kwargs = draw(st.dictionaries(keys, st.one_of(ANY, *map(_like, fields.values())),
                                  max_size=3))
    return name, kwargs


@PROPERTY
@given(make_method_inputs())
def test_make_method_builds_or_raises_one_clear_error(example):
    name, kwargs = example
    try:
        make_method(name, **kwargs)
    except ValueError as err:
        given = set(kwargs) | {repr(v) for v in kwargs.values()} | {name}
        assert _names_a_given_key(str(err), given), (name, kwargs, str(err))
