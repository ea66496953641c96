"""``--compile``: converted models compile to one graph, never recompile as methods change
their layers, and train as eager does.

Backend ``aot_eager`` (dynamo + AOT autograd, eager kernels): it traces the forward and the
backward, SST's autograd Functions included, without a C++ compiler, in seconds. It runs the
same aten kernels as eager; the tolerances below allow for AOT autograd's reordering of a
few of them (it was bit-exact on this machine, but nothing guarantees it).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from conftest import HF_MODELS, TinyMLP, token_batch
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounterWithBackend

from sparse_spectral import make_method
from sparse_spectral.cli import build_parser
from sparse_spectral.cli.flags import settings_from_args
from sparse_spectral.spectral.layer import SpectralLinear
from sparse_spectral.tasks.images import IMAGES, ImagesSettings
from sparse_spectral.tasks.registry import get_task
from sparse_spectral.training.compile import available_backends, check_compile, compile_model
from sparse_spectral.training.config import RuntimeSettings
from sparse_spectral.training.runner import train_run

TOLERANCE = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test starts and ends with empty dynamo caches and recompiles allowed."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=False):
        yield
    torch._dynamo.reset()


def _mlp_batch(step: int):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(6, 12, generator=gen), torch.randint(0, 5, (6,), generator=gen)


def _mlp_loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def _lm_batch(step: int):
    return token_batch(step)


def _lm_loss(model, ids):
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             ids[:, 1:].reshape(-1))


def _train(method_name, build, batch, loss_fn, steps, counter=None, **options):
    """Losses and final tensors of ``steps`` steps; compiled with ``counter`` if given.

    After the first step (one compile) recompiling is an error: the steps after it swap
    selections, re-SVD or merge.
    """
    torch.manual_seed(0)
    method = make_method(method_name, **options)
    model = method.prepare(build())
    if counter is not None:
        compile_model(model, counter)
    optimizer = method.build_optimizer(model, lr=1e-2)
    losses = []
    for step in range(1, steps + 1):
        loss = loss_fn(model, batch(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(step, optimizer)
        losses.append(loss.detach())
        if step == 1 and counter is not None:
            assert counter.frame_count == 1  # one graph: no break
            torch._dynamo.config.error_on_recompile = True
    torch._dynamo.config.error_on_recompile = False
    return torch.stack(losses), {k: v.clone() for k, v in model.state_dict().items()}


MLP_CASES = [
    ("sst", dict(rank=2, iteration_interval=2, forward_mode="factored")),
    ("sst", dict(rank=2, iteration_interval=2, forward_mode="composed")),
    ("sst", dict(rank=2, iteration_interval=2, forward_mode="auto")),
    # every layer re-SVDs every other step
    ("sst", dict(rank=2, iteration_interval=2, iterations_per_round=1, stagger_resvd=False)),
    ("sst-sampled-s", dict(rank=2, iteration_interval=2)),
    ("sst-default-grad", dict(rank=2, iteration_interval=2)),
    ("full", {}),
    ("lora", dict(rank=2)),
    ("relora", dict(rank=2, merge_interval=2)),
    ("galore", dict(rank=2, update_proj_gap=2)),
]


@pytest.mark.parametrize("method, options", MLP_CASES,
                         ids=[f"{m}-{o.get('forward_mode', '')}{i}"
                              for i, (m, o) in enumerate(MLP_CASES)])
def test_mlp_compiles_once_and_trains_as_eager(method, options):
    counter = CompileCounterWithBackend("aot_eager")
    eager_losses, eager_state = _train(method, TinyMLP, _mlp_batch, _mlp_loss, 8, **options)
    losses, state = _train(method, TinyMLP, _mlp_batch, _mlp_loss, 8, counter, **options)
    assert counter.frame_count == 1
    torch.testing.assert_close(losses, eager_losses, **TOLERANCE)
    assert state.keys() == eager_state.keys()
    for key in state:
        torch.testing.assert_close(state[key], eager_state[key], **TOLERANCE, msg=key)


def _one_layer(name: str):
    """conftest's tiny transformers model with one block (compile time grows with depth)."""
    def build():
        model = HF_MODELS[name]()
        torch.manual_seed(0)
        return type(model)(model.config.__class__(**{**model.config.to_dict(),
                                                      **{LAYERS[name]: 1}}))

    return build


LAYERS = {"llama": "num_hidden_layers", "opt": "num_hidden_layers", "gpt2": "n_layer"}


def _mlp_loss_bf16_mixed(model, batch):
    """The loop's bf16-mixed: autocast around the call, outside the compiled region; SST's
    Functions apply autocast's casts themselves, so dynamo traces them under it."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return _mlp_loss(model, batch)


@pytest.mark.parametrize("forward_mode", ["factored", "composed"])
def test_bf16_mixed_compiles_once_and_trains_as_eager(forward_mode):
    counter = CompileCounterWithBackend("aot_eager")
    options = dict(rank=2, iteration_interval=2, forward_mode=forward_mode)
    eager_losses, eager_state = _train("sst", TinyMLP, _mlp_batch, _mlp_loss_bf16_mixed, 6,
                                       **options)
    losses, state = _train("sst", TinyMLP, _mlp_batch, _mlp_loss_bf16_mixed, 6, counter,
                           **options)
    assert counter.frame_count == 1
    torch.testing.assert_close(losses, eager_losses, **TOLERANCE)
    for key in state:
        assert state[key].dtype == eager_state[key].dtype  # fp32 parameters stay fp32
        torch.testing.assert_close(state[key], eager_state[key], **TOLERANCE, msg=key)


@pytest.mark.parametrize("name, method, options", [
    ("llama", "sst", dict(rank=2, iteration_interval=1, iterations_per_round=1)),
    ("gpt2", "sst", dict(rank=2, iteration_interval=1, forward_mode="factored")),  # Conv1D
    ("opt", "relora", dict(rank=2, merge_interval=1)),
])
def test_transformers_models_compile_once_and_train_as_eager(name, method, options):
    counter = CompileCounterWithBackend("aot_eager")
    build = _one_layer(name)
    eager_losses, eager_state = _train(method, build, _lm_batch, _lm_loss, 3, **options)
    losses, state = _train(method, build, _lm_batch, _lm_loss, 3, counter, **options)
    assert counter.frame_count == 1
    torch.testing.assert_close(losses, eager_losses, **TOLERANCE)
    for key in state:
        torch.testing.assert_close(state[key], eager_state[key], **TOLERANCE, msg=key)


def test_selection_changes_really_happen_under_compile():
    """The no-recompile cases above are not vacuous: SST swapped and re-decomposed."""
    counter = CompileCounterWithBackend("aot_eager")
    torch.manual_seed(0)
    method = make_method("sst", rank=2, iteration_interval=1, iterations_per_round=1,
                         stagger_resvd=False)
    model = compile_model(method.prepare(TinyMLP()), counter)
    layer = next(m for m in model.modules() if isinstance(m, SpectralLinear))
    optimizer = method.build_optimizer(model, lr=1e-2)
    seen = set()
    for step in range(1, 6):
        _mlp_loss(model, _mlp_batch(step)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(step, optimizer)
        seen.add(tuple(layer.idx.tolist()))
    assert len(seen) > 1 and counter.frame_count == 1


def test_shapes_that_change_recompile_a_bounded_number_of_times():
    """Default ``dynamic=None``: a second shape makes sizes symbolic; later ones reuse it.

    SST's ``auto`` mode picks factored or composed from the token count; with symbolic sizes
    the choice is a guard, so crossing the threshold adds one graph, and no more after.
    """
    counter = CompileCounterWithBackend("aot_eager")
    torch.manual_seed(0)
    model = make_method("sst", rank=2).prepare(TinyMLP())
    eager = make_method("sst", rank=2).prepare(TinyMLP())
    eager.load_state_dict(model.state_dict())
    layer = model.blocks[1]["fc"]
    compile_model(model, counter)
    small, large = 4, 4000  # the width-16 layers go composed above about 30 tokens
    assert layer.mode_for(torch.empty(small, 16)) == "factored"
    assert layer.mode_for(torch.empty(large, 16)) == "composed"
    counts = []
    with torch.no_grad():
        for rows in (small, small + 1, small + 3, large, large + 7, small + 2, 3, large - 1):
            x = torch.randn(rows, 12)
            torch.testing.assert_close(model(x), eager(x), **TOLERANCE)
            counts.append(counter.frame_count)
    assert counts[-1] <= 3, counts  # static, symbolic factored, symbolic composed
    assert counts[4:] == [counts[4]] * 4, counts  # nothing new once both modes are seen


# ---------------------------------------------------------------------- bad input
def test_unknown_backend_names_the_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"compile_backend='nope' is unknown; allowed: .*"
                                         r"aot_eager, .*eager, .*inductor"):
        check_compile(True, "nope", torch.device("cpu"))


def test_a_backend_that_fails_is_refused_with_its_error():
    name = "sst_test_broken_backend"
    if name not in available_backends():
        @torch._dynamo.register_backend(name=name)
        def broken(graph_module, example_inputs):
            raise RuntimeError("no compiler here")

    with pytest.raises(ValueError, match=rf"compile_backend='{name}' fails on cpu: .*no compiler "
                                         r"here.*allowed backends: .*aot_eager"):
        check_compile(True, name, torch.device("cpu"))


def test_a_backend_without_compile_is_an_error_and_bad_values_are_refused():
    with pytest.raises(ValueError, match=r"compile_backend='aot_eager' has no effect without "
                                         r"compile=true"):
        check_compile(False, "aot_eager", torch.device("cpu"))
    check_compile(False, "inductor", torch.device("cpu"))  # the default: nothing to check
    with pytest.raises(ValueError, match=r"compile='yes' must be true or false"):
        RuntimeSettings(compile="yes")
    with pytest.raises(ValueError, match=r"compile_backend='' must be a backend name"):
        RuntimeSettings(compile=True, compile_backend="")


def test_bad_backend_stops_the_run_before_its_folder_exists(tmp_path):
    settings = _digits(tmp_path, runtime={"compile": True, "compile_backend": "nope"})
    with pytest.raises(ValueError, match="compile_backend='nope' is unknown"):
        train_run(IMAGES, settings, progress=False)
    assert not (tmp_path / "run").exists()


def test_graph_task_refuses_compile_and_says_why():
    graph = get_task("graph")
    settings = graph.settings_class.from_dict({"runtime": {"compile": True,
                                                           "compile_backend": "eager"}})
    with pytest.raises(ValueError, match=r"compile=true is not supported by the graph task: "
                                         r"HyboNet's sparse CSR products"):
        graph.check(settings)


def test_flags_and_config_reach_the_runtime_section(tmp_path):
    cls = IMAGES.settings_class
    args = build_parser().parse_args(["train", "images", "--compile", "--compile_backend",
                                      "aot_eager"])
    settings, _, _ = settings_from_args(args, cls)
    assert settings.runtime.compile is True and settings.runtime.compile_backend == "aot_eager"
    args = build_parser().parse_args(["train", "images", "--compile", "false"])
    assert settings_from_args(args, cls)[0].runtime.compile is False
    config = tmp_path / "c.toml"
    config.write_text('[runtime]\ncompile = true\ncompile_backend = "eager"\n')
    args = build_parser().parse_args(["train", "images", "--config", str(config)])
    runtime = settings_from_args(args, cls)[0].runtime
    assert (runtime.compile, runtime.compile_backend) == (True, "eager")


# ---------------------------------------------------------------------- the engine
def _digits(tmp_path, name="run", **changes):
    values = dict(dataset="digits", hidden=[16], rank=4, epochs=1, batch_size=32,
                  warmup_steps=3, eval_every=20, output_dir=str(tmp_path / name),
                  iteration_interval=5)
    return ImagesSettings.from_dict({**values, **changes})


COMPILED = {"compile": True, "compile_backend": "aot_eager"}


def test_engine_run_compiled_matches_eager_and_resumes(tmp_path):
    eager = train_run(IMAGES, _digits(tmp_path, "eager"), progress=False).summary
    settings = _digits(tmp_path, "compiled", save_every=20, runtime=COMPILED)
    compiled = train_run(IMAGES, settings, progress=False).summary
    steps = compiled["final_step"]
    assert steps == eager["final_step"] > 20
    for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5), key
    # one training graph and one for evaluation (eval mode, no_grad): no recompile for the
    # selection changes of ~40 steps at T3 = 5 nor the re-SVDs
    assert compiled["compiled_graphs"] == 2
    assert compiled["settings"]["runtime"] == {"device": "auto", "precision": "fp32",
                                               "parallel": "auto", "dist_timeout_s": 1800.0,
                                               **COMPILED}
    final = f"step_{steps:06d}"
    a = load_file(tmp_path / "eager" / "checkpoints" / final / "model.safetensors")
    b = load_file(tmp_path / "compiled" / "checkpoints" / final / "model.safetensors")
    assert a.keys() == b.keys()  # no _orig_mod. prefix
    for key in a:
        torch.testing.assert_close(b[key], a[key], **TOLERANCE, msg=key)
    # Resume the compiled run from its step-20 checkpoint: the same final model.
    root = tmp_path / "compiled" / "checkpoints"
    (root / "latest").write_text("step_000020\n")
    train_run(IMAGES, settings, resume=True, progress=False)
    c = load_file(root / final / "model.safetensors")
    for key in b:
        torch.testing.assert_close(c[key], b[key], **TOLERANCE, msg=key)
