"""Flags generated from the settings dataclasses and the method registry."""

from __future__ import annotations

import dataclasses

import pytest

from sparse_spectral.cli import build_parser, main
from sparse_spectral.cli.flags import settings_from_args
from sparse_spectral.methods import available_methods, method_config_class
from sparse_spectral.tasks.registry import available_tasks, get_task
from sparse_spectral.training.config import field_paths, flag_name


def _help(command, task, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, task, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("task", ["lm", "mt", "graph", "images"])
def test_one_flag_per_settings_field_with_help_and_default(task, capsys):
    text = _help("train", task, capsys)
    cls = get_task(task).settings_class
    defaults = cls()
    for name, (section, f) in field_paths(cls).items():
        if (section, name) == ("method", "options"):
            continue
        assert f"--{flag_name(f)} " in text, name
    shown = cls.DEFAULT_NOTES.get("lr", defaults.optim.lr)  # graph: HyboNet's per data set
    assert f"(default: {shown})" in " ".join(text.split())


def test_community_flag_names_and_method_options_from_the_registry(capsys):
    text = _help("compare", "lm", capsys)
    for flag in ("--lr", "--num_training_steps", "--warmup_steps", "--batch_size",
                 "--total_batch_size", "--eval_every", "--save_every", "--seed", "--rank",
                 "--iteration_interval", "--update_proj_gap", "--galore_scale",
                 "--merge_interval", "--target_modules", "--exclude_modules", "--sampler",
                 "--seeds", "--methods", "--method_lr", "--set", "--threads"):
        assert f"{flag} " in text, flag
    # every option of every method config is reachable as a flag
    for method in available_methods():
        for f in dataclasses.fields(method_config_class(method)):
            if f.name not in ("rank", "seed", "target_modules", "exclude_modules",
                              "iteration_interval"):
                assert f"--{flag_name(f)} " in text, (method, f.name)


def test_flags_override_set_which_overrides_the_config(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[optim]\nlr = 0.1\nweight_decay = 0.2\n[method]\nname = "lora"\n'
                      'rank = 3\n[method.options]\nalpha = 8.0\n')
    args = build_parser().parse_args(["train", "lm", "--config", str(config), "--set",
                                      "optim.weight_decay=0.3", "--set", "lr=0.4",
                                      "--lr", "0.5", "--alpha", "16"])
    settings, _, explicit = settings_from_args(args, get_task("lm").settings_class)
    assert settings.optim.lr == 0.5 and settings.optim.weight_decay == 0.3
    assert settings.method.name == "lora" and settings.method.rank == 3
    assert settings.method.options == {"alpha": 16.0}
    assert explicit == {"rank"}


def test_flat_config_keys_still_work_with_a_deprecation_warning(tmp_path):
    config = tmp_path / "old.toml"
    config.write_text('lr = 0.01\nrank = 4\nmodel = "gpt_micro"\n')
    args = build_parser().parse_args(["train", "lm", "--config", str(config)])
    with pytest.warns(FutureWarning, match=r"flat key\(s\) \['lr', 'rank'\] are deprecated"):
        settings, _, _ = settings_from_args(args, get_task("lm").settings_class)
    assert settings.optim.lr == 0.01 and settings.method.rank == 4


@pytest.mark.parametrize("argv, message", [
    (["--method", "full", "--rank", "4"], r"--rank 4 does not apply to full"),
    (["--method", "lora", "--iteration_interval", "5"],
     r"--iteration_interval 5 does not apply to lora"),
    (["--method", "lora", "--sampler", "uniform"],
     r"method option 'sampler' does not apply to lora \(methods that take it: .*sst"),
    (["--method", "sst", "--galore_scale", "0.5"], r"method option 'scale' does not apply"),
])
def test_a_flag_that_does_not_apply_is_an_error(argv, message, tmp_path, capsys):
    code = main(["train", "images", "--dataset", "digits", "--epochs", "0.1", "--no_progress",
                 "--output_dir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("sst: error:") and err.count("\n") == 1
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_compare_accepts_an_option_that_some_methods_take(tmp_path):
    from sparse_spectral.training.runner import check_choices

    task = get_task("images")
    settings = task.settings_class.from_dict({"iteration_interval": 5,
                                              "method_options": {"merge_interval": 7}})
    check_choices(task, settings, ["full", "relora", "sst"])  # no error
    with pytest.raises(ValueError, match="merge_interval"):
        check_choices(task, settings, ["full", "sst"])


def test_every_task_is_registered_with_its_flags():
    assert available_tasks() == ["graph", "images", "lm", "mt"]
    for name in available_tasks():
        build_parser().parse_args(["train", name, "--seed", "3"])  # parses


def _example_configs():
    from pathlib import Path

    return sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", _example_configs(), ids=lambda p: p.name)
def test_every_example_config_maps_onto_settings_without_warnings(path, recwarn):
    from sparse_spectral.cli.commands import ABLATE_KEYS, _ablation_config
    from sparse_spectral.cli.flags import COMMAND_KEYS

    command, task = ("ablate", path.name.split("_")[1]) if path.name.startswith("ablate_") \
        else ("compare", path.name.split("_")[0])
    args = build_parser().parse_args([command, task, "--config", str(path)])
    cls = get_task(task).settings_class
    if command == "ablate":
        config = _ablation_config(args)
        settings, _, _ = settings_from_args(args, cls, ABLATE_KEYS, config["settings"])
    else:
        settings, extras, _ = settings_from_args(args, cls, COMMAND_KEYS)
        assert extras["methods"]
    assert settings.method.interval is not None  # every example sets its T3
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_demo_honours_the_rank_for_every_method(capsys):
    assert main(["demo", "--methods", "lora,sst", "--rank", "2", "--epochs", "1", "--width",
                 "16", "--threads", "1"]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    # 64-16-16-10 MLP, head dense (16 * 10 + 10): LoRA r = 2 on the 64x16 and 16x16 layers
    # trains 2 (64 + 16) + 2 (16 + 16) = 224 (their weights and biases are frozen); the
    # default rank 8 would train 896.
    assert int(rows["lora"].replace(",", "")) == 224 + 170


@pytest.mark.parametrize("argv, expected", [([], False), (["--tensorboard"], True),
                                            (["--tensorboard", "false"], False),
                                            (["--tensorboard", "TRUE"], True)])
def test_a_bool_flag_alone_means_true(argv, expected):
    args = build_parser().parse_args(["train", "lm", *argv])
    settings, _, _ = settings_from_args(args, get_task("lm").settings_class)
    assert settings.output.tensorboard is expected


@pytest.mark.parametrize("argv, message", [
    (["--tensorboard", "maybe"], "argument --tensorboard: expected true or false, got 'maybe'"),
    (["--tensorboard", "yes"], "argument --tensorboard: expected true or false, got 'yes'"),
    (["--rank", "2.5"], "argument --rank: expected an int, got '2.5'"),
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
])
def test_a_bad_flag_value_names_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "lm", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err == f"sst: error: {message} (see sst train lm --help)\n"


def test_yaml_sections_map_like_toml_ones(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: gpt_micro\nmethods: full,sst\nmethod:\n  rank: 4\n"
                      "  iteration_interval: 7\n  options:\n    sampler: uniform\n"
                      "optim:\n  lr: 0.02\nschedule:\n  num_training_steps: 9\n")
    args = build_parser().parse_args(["compare", "lm", "--config", str(config)])
    settings, command, explicit = settings_from_args(args, get_task("lm").settings_class)
    assert (settings.model, settings.method.rank, settings.method.interval) == ("gpt_micro", 4, 7)
    assert settings.method.options == {"sampler": "uniform"} and settings.optim.lr == 0.02
    assert settings.schedule.num_training_steps == 9 and command["methods"] == "full,sst"
    assert explicit == {"rank", "interval"}


def test_unknown_config_keys_are_one_error_naming_them(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("modle = 'gpt_micro'\n[optim]\nlearning_rate = 1.0\n")
    assert main(["train", "lm", "--config", str(config), "--no_progress",
                 "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown setting(s) ['modle', 'optim.learning_rate']" in err
    assert "allowed:" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["lm", "mt", "graph", "images"])
def test_every_compare_takes_seeds_methods_and_method_lr(task, tmp_path, monkeypatch):
    import sparse_spectral.report as report
    import sparse_spectral.training.compare as compare

    seen = {}

    def fake_compare(task_obj, settings, methods, seeds=None, method_lr=None, progress=True):
        seen.update(task=task_obj.name, methods=methods, seeds=seeds, method_lr=method_lr)
        (tmp_path / "report.md").write_text("report\n")

    monkeypatch.setattr(compare, "run_compare", fake_compare)
    monkeypatch.setattr(report, "render", lambda directory: {})
    assert main(["compare", task, "--methods", "full,sst", "--seeds", "3,4", "--method_lr",
                 "sst=0.01", "--output_dir", str(tmp_path)]) == 0
    assert seen == {"task": task, "methods": ["full", "sst"], "seeds": [3, 4],
                    "method_lr": {"sst": 0.01}}
