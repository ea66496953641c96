"""Composed settings: nested sections, flat keys, legacy keys, unknown keys, flat views."""

from __future__ import annotations

import dataclasses

import pytest

from sparse_spectral.tasks.graph import GraphSettings
from sparse_spectral.tasks.images import ImagesSettings
from sparse_spectral.tasks.lm import LMSettings
from sparse_spectral.tasks.mt import MTSettings
from sparse_spectral.training.config import (
    MethodChoice,
    OptimSettings,
    TaskSettings,
    field_paths,
    from_dict,
    to_flat_dict,
)

SETTINGS = [LMSettings, MTSettings, GraphSettings, ImagesSettings]


@pytest.mark.parametrize("cls", SETTINGS)
def test_every_task_nests_the_shared_sections_with_unique_field_names(cls):
    assert issubclass(cls, TaskSettings)
    names = [f.name for f in dataclasses.fields(cls)]
    assert {"method", "optim", "schedule", "eval", "output", "seed"} <= set(names)
    paths = field_paths(cls)  # raises on a duplicated field name
    assert paths["lr"][0] == "optim" and paths["rank"][0] == "method"
    assert paths["output_dir"][0] == "output"


@pytest.mark.parametrize("cls", SETTINGS)
def test_every_field_has_help_text(cls):
    missing = [name for name, (_, f) in field_paths(cls).items() if not f.metadata.get("help")]
    assert not missing


def test_nested_and_flat_keys_build_the_same_settings():
    nested = LMSettings.from_dict({"optim": {"lr": 3e-3}, "method": {"name": "lora", "rank": 4},
                                   "schedule": {"num_training_steps": 7}, "model": "gpt_micro"})
    flat = LMSettings.from_dict({"lr": 3e-3, "method": "lora", "rank": 4,
                                 "num_training_steps": 7, "model": "gpt_micro"})
    assert nested == flat
    assert nested.optim.lr == 3e-3 and nested.method.name == "lora"
    # Sections not given keep the task's own defaults, not the shared class's.
    assert nested.output.output_dir == "runs/lm" and MTSettings().optim.lr == 2e-3


def test_flag_spellings_and_legacy_keys_map_onto_fields():
    s = MTSettings.from_dict({"schedule": "noam", "iteration_interval": 9,
                              "method_options": {"sampler": "uniform"}})
    assert s.schedule.kind == "noam" and s.method.interval == 9
    assert s.method.options == {"sampler": "uniform"}
    inner = MTSettings.from_dict({"schedule": {"schedule": "noam"},
                                  "method": {"iteration_interval": 3}})
    assert inner.schedule.kind == "noam" and inner.method.interval == 3
    # SST's T3 as an old method option becomes the run's interval.
    old = LMSettings.from_dict({"method_options": {"iteration_interval": 5, "lam": 0.5}})
    assert old.method.interval == 5 and old.method.options == {"lam": 0.5}
    graph = GraphSettings.from_dict({"eval_freq": 2})
    assert graph.eval.eval_every == 2


def test_unknown_keys_are_all_named_with_the_allowed_ones():
    with pytest.raises(ValueError) as info:
        LMSettings.from_dict({"lrr": 1, "optim": {"betas": 2}, "method": {"ranks": 3}},
                             source="--config run.toml")
    text = str(info.value)
    assert text.startswith("--config run.toml: unknown setting(s)")
    for key in ("'lrr'", "'optim.betas'", "'method.ranks'"):
        assert key in text
    assert "allowed:" in text and "num_training_steps" in text and "optim.*" in text


@pytest.mark.parametrize("values, message", [
    ({"lr": -1.0}, "lr=-1.0 must be > 0"),
    ({"rank": 0}, "rank=0 must be an int >= 1"),
    ({"iteration_interval": 0}, "interval=0 must be an int >= 1"),
    ({"min_lr_ratio": 2.0}, r"min_lr_ratio=2.0 must be in \[0, 1\]"),
    ({"warmup_steps": -1}, "warmup_steps=-1 must be an int >= 0"),
    ({"save_every": -2}, "save_every=-2 must be an int >= 0"),
])
def test_bad_values_name_themselves(values, message):
    with pytest.raises(ValueError, match=message):
        LMSettings.from_dict(values)


def test_flat_view_keeps_the_results_file_keys():
    s = ImagesSettings.from_dict({"method": "lora", "rank": 4, "lr": 1e-2,
                                  "target_modules": "0,2"})
    flat = to_flat_dict(s)
    assert flat["method"] == "lora" and flat["rank"] == 4 and flat["lr"] == 1e-2
    assert flat["method_options"] == {} and flat["iteration_interval"] is None
    assert flat["target_modules"] == ["0", "2"]  # comma-separated suffixes
    assert "optim" not in flat and flat["output_dir"] == "runs/images"


def test_from_dict_works_on_any_settings_class():
    @dataclasses.dataclass
    class Tiny(TaskSettings):
        width: int = dataclasses.field(default=3, metadata={"help": "width"})

    s = from_dict(Tiny, {"width": 5, "lr": 0.5})
    assert s.width == 5 and s.optim == OptimSettings(lr=0.5)
    assert s.method == MethodChoice()
