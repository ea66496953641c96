"""Strict configs and the one error path (issue 17): each case a user found, as a test.

A config value that is misspelt, of the wrong type or out of range is one ``sst: error:``
line naming the file, the field and what is allowed, exit code 2, nothing written; never a
silent default, a truthy string or a traceback.
"""

from __future__ import annotations

import math

import pytest

from sparse_spectral.cli import main
from sparse_spectral.methods import make_method
from sparse_spectral.tasks.images import IMAGES, ImagesSettings
from sparse_spectral.tasks.lm import LMSettings
from sparse_spectral.training.config import MethodChoice, OptimSettings
from sparse_spectral.training.loop import LoopSettings

DIGITS = ["--dataset", "digits", "--hidden", "32", "--epochs", "0.05", "--batch_size", "64",
          "--no_progress"]


def _train(tmp_path, capsys, config_text=None, suffix=".toml", args=(), task="images"):
    """``sst train`` with a config file; ``(exit code, stderr, config path)``."""
    argv = ["train", task, "--output_dir", str(tmp_path / "run"), *args]
    path = tmp_path / f"run{suffix}"
    if config_text is not None:
        path.write_text(config_text)
        argv += ["--config", str(path)]
    code = main(argv + (DIGITS if task == "images" else []))
    return code, capsys.readouterr().err, path


def _one_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("sst: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


# ---------------------------------------------------------------------- silently wrong before
@pytest.mark.parametrize("text, needles", [
    # a misspelt option was dropped and the run trained with the default
    ('[method]\nname = "sst"\n[method.options]\niteration_intervall = 5\n',
     ["unknown method option(s) ['iteration_intervall']", "allowed: ", "iteration_interval,"]),
    # "no" is a non-empty string: it left the enhanced gradient on
    ('[method.options]\nenhanced_gradient = "no"\n',
     ["enhanced_gradient='no' must be true or false (got str)"]),
    # true is 1: the run trained at lr 1.0
    ("[optim]\nlr = true\n", ["lr=True must be None or a finite number (got bool)"]),
    ('[method]\nname = "lora"\n[method.options]\nalpha = nan\n',
     ["alpha=nan must be None or a finite number"]),
    ('[method]\nname = "full"\n[method.options]\nsampler = "uniform"\n',
     ["method option 'sampler' does not apply to full (methods that take it: sst"]),
    ('[method]\nname = "sst"\n[method.options]\nlam = 2.0\n',
     ["lam=2.0 must be a number in [0, 1]"]),
    ('[method.options]\nrank = 4\n', ["are run choices, not options: set rank as method.rank"]),
    ("[schedule]\nnum_training_steps = 10.5\n",
     ["num_training_steps=10.5 must be an int (got float)"]),
    ('[schedule]\nnum_training_steps = "10"\n',
     ["num_training_steps='10' must be an int (got str)"]),
    ("optim = 5\n", ["optim must be a section ([optim] in TOML"]),
    ("threads = 2.5\n", ["threads=2.5 must be an int >= 1"]),
    ('threads = "4"\n', ["threads='4' must be an int >= 1"]),
    ("seed = -1\n", ["seed=-1 must be an int in [0, 2**32)"]),
])
def test_a_bad_config_value_is_one_error_naming_the_file(text, needles, tmp_path, capsys):
    code, err, path = _train(tmp_path, capsys, text)
    _one_error(code, err, f"--config {path}: " if "threads" not in text else "", *needles)
    assert not (tmp_path / "run").exists()


def test_booleans_come_from_booleans_or_the_words_true_and_false(tmp_path):
    built = ImagesSettings.from_dict({"tensorboard": "False", "method_options": {
        "enhanced_gradient": "false", "stagger_resvd": True}})
    assert built.output.tensorboard is False
    assert built.method.options == {"enhanced_gradient": False, "stagger_resvd": True}
    for bad in ("no", "yes", 1, 0, "0"):
        with pytest.raises(ValueError, match=r"update_all_singular_values=.* must be true or "
                                             r"false"):
            make_method("sst", update_all_singular_values=bad)


@pytest.mark.parametrize("flag, value, message", [
    ("--grad_clip", "-1", "grad_clip=-1.0 must be >= 0"),
    ("--threads", "0", "threads=0 must be an int >= 1"),
    ("--iteration_interval", "0", "interval=0 must be an int >= 1"),
])
def test_a_bad_flag_value_is_one_error(flag, value, message, tmp_path, capsys):
    code, err, _ = _train(tmp_path, capsys, args=(flag, value))
    _one_error(code, err, f"sst: error: {message}")  # a flag's value: no file to name
    assert not (tmp_path / "run").exists()


def test_the_error_names_the_layer_the_value_came_from(tmp_path, capsys):
    code, err, path = _train(tmp_path, capsys, "[optim]\nlr = 0.5\n",
                             args=("--set", "optim.weight_decay=-1"))
    _one_error(code, err, "sst: error: --set: weight_decay=-1 must be >= 0")
    code, err, path = _train(tmp_path, capsys, "[optim]\nweight_decay = -1\n",
                             args=("--lr", "0.5"))
    _one_error(code, err, f"sst: error: --config {path}: weight_decay=-1 must be >= 0")


def test_the_loop_refuses_a_negative_clip_rather_than_not_clipping():
    with pytest.raises(ValueError, match=r"grad_clip=-1.0 must be >= 0"):
        OptimSettings(grad_clip=-1.0)
    with pytest.raises(ValueError, match=r"grad_clip=-0.5 must be >= 0 and finite"):
        LoopSettings(grad_clip=-0.5)
    assert LoopSettings(grad_clip=0.0).grad_clip == 0.0  # 0: no clipping, as documented


def test_lora_alpha_must_be_a_finite_number():
    for bad in (math.nan, math.inf, "8", True):
        with pytest.raises(ValueError, match=r"^alpha=.* must be None or a finite number"):
            make_method("lora", alpha=bad)
    assert make_method("lora", alpha=16).config.effective_alpha == 16.0


# ---------------------------------------------------------------------- options at every entry
def test_an_option_of_no_method_is_refused_when_the_settings_are_built():
    with pytest.raises(ValueError, match=r"unknown method option\(s\) \['iteration_intervall'\]"
                                         r"; allowed: alpha, "):
        MethodChoice(options={"iteration_intervall": 5})
    with pytest.raises(ValueError, match=r"^settings: unknown method option"):
        LMSettings.from_dict({"method_options": {"smapler": "uniform"}})


def test_train_run_refuses_an_option_its_method_does_not_take(tmp_path):
    from sparse_spectral.training.runner import train_run

    settings = ImagesSettings.from_dict({"dataset": "digits", "method": "full",
                                         "method_options": {"sampler": "uniform"},
                                         "output_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match=r"method option\(s\) \['sampler'\] do not apply to "
                                         r"full; its options: exclude_modules, target_modules"):
        train_run(IMAGES, settings, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_comparison_gives_each_method_the_shared_options_it_takes():
    from sparse_spectral.training.runner import with_run

    shared = ImagesSettings.from_dict({"method_options": {"sampler": "uniform",
                                                          "merge_interval": 7}})
    assert with_run(shared, method="full").method.options == {}
    assert with_run(shared, method="sst").method.options == {"sampler": "uniform"}
    assert with_run(shared, method="relora").method.options == {"merge_interval": 7}


def test_an_ablation_checks_every_variant_before_the_first_trains(tmp_path):
    from sparse_spectral.experiments.ablation import default_variants, run_ablation

    misspelt = ImagesSettings.from_dict({"dataset": "digits", "method_options": {"lam": 0.5}})
    bad_t3 = [v for v in default_variants([0]) if v.label in ("full", "sst T3=0")]
    with pytest.raises(ValueError, match=r"^interval=0 must be an int >= 1"):
        run_ablation(IMAGES, misspelt, bad_t3, tmp_path / "abl", progress=False)
    only_full = [v for v in default_variants() if v.label == "full"]
    with pytest.raises(ValueError, match=r"method option 'lam' does not apply to full"):
        run_ablation(IMAGES, misspelt, only_full, tmp_path / "abl", progress=False)
    assert not (tmp_path / "abl").exists()


def test_ablate_names_the_file_of_a_bad_shared_option(tmp_path, capsys):
    config = tmp_path / "abl.toml"
    config.write_text('variants = "full,sst"\n[settings]\ndataset = "digits"\n'
                      "[settings.method.options]\nlam = 3.0\n")
    code = main(["ablate", "images", "--config", str(config), "--no_progress",
                 "--output_dir", str(tmp_path / "abl")])
    _one_error(code, capsys.readouterr().err, f"--config {config}: lam=3.0 must be a number")
    assert not (tmp_path / "abl").exists()


# ---------------------------------------------------------------------- config files
def test_yaml_exponent_numbers_are_numbers(tmp_path):
    from sparse_spectral.cli.flags import load_config_file

    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-2\n  weight_decay: 5E-4\nschedule:\n  min_lr_ratio: .5\n"
                    "  num_training_steps: 1000\nmethod:\n  name: sst\n")
    values = load_config_file(str(path))
    assert values["optim"] == {"lr": 0.01, "weight_decay": 5e-4}
    assert values["schedule"] == {"min_lr_ratio": 0.5, "num_training_steps": 1000}
    assert isinstance(values["schedule"]["num_training_steps"], int)
    assert LMSettings.from_dict(values).optim.lr == 0.01


@pytest.mark.parametrize("suffix, text, needles", [
    (".yaml", "optim: [1, 2\n", ["not valid YAML: ", "line 2"]),
    (".yaml", "optim:\n  lr: 0.1\n  lr: 0.2\n", ["not valid YAML: ", "key 'lr' is given twice",
                                                  "line 3"]),
    (".yaml", "- 1\n- 2\n", ["expected a mapping at the top level, got list"]),
    (".toml", "[optim\nlr = 1\n", ["not valid TOML: ", "line 1, column 7"]),
    (".toml", "lr = 1\nlr = 2\n", ["not valid TOML: "]),
    (".json", "{}", ["unknown format '.json'; use .toml, .yaml or .yml"]),
])
def test_a_broken_config_file_is_named_with_the_parsers_position(suffix, text, needles,
                                                                  tmp_path, capsys):
    code, err, path = _train(tmp_path, capsys, text, suffix=suffix)
    _one_error(code, err, f"sst: error: --config {path}: ", *needles)


def test_a_config_file_that_is_not_text_is_named(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_bytes(b"\xff\xfe lr = 1")
    code = main(["train", "images", "--config", str(path), *DIGITS])
    _one_error(code, capsys.readouterr().err, f"--config {path}: not UTF-8 text")


# ---------------------------------------------------------------------- the CLI's error path
def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys,
                                                                         monkeypatch):
    import sparse_spectral.training.runner as runner

    def broken(*args, **kwargs):
        raise TypeError("something inside broke")

    monkeypatch.setattr(runner, "train_run", broken)
    argv = ["train", "images", "--output_dir", str(tmp_path / "run"), *DIGITS]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == ("sst: internal error: TypeError: something inside broke (a bug: please "
                   "report it; rerun with --debug for the traceback)\n")
    assert main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in broken" in err
    assert err.rstrip().endswith("rerun with --debug for the traceback)")
    assert main(["--debug", *argv]) == 1  # before the sub-command too
    assert "Traceback" in capsys.readouterr().err


def test_a_file_system_error_is_a_user_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", "images", "--output_dir", str(blocker / "run"), *DIGITS])
    _one_error(code, capsys.readouterr().err, str(blocker))


def test_a_usage_error_is_the_same_one_line_format(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "images", "--no_such_flag"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("sst: error: unrecognized arguments: --no_such_flag "
                                       "(see sst --help)\n")
