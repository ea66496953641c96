"""A broken save is one ValueError naming its file (issue 17), not a bare library error."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparse_spectral import load_pretrained, save_pretrained
from sparse_spectral.methods import make_method


def _model(out: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, out))


@pytest.fixture
def saved(tmp_path):
    method = make_method("sst", rank=2, target_modules=["0"])
    save_pretrained(method.prepare(_model()), method, tmp_path / "save")
    return tmp_path / "save"


def _method_json(saved) -> dict:
    return json.loads((saved / "method.json").read_text())


def test_a_good_save_loads(saved):
    model, method = load_pretrained(_model(), saved)
    assert method.name == "sst" and method.config.rank == 2


@pytest.mark.parametrize("content, message", [
    ("{not json", r"method.json: not valid JSON \(Expecting property name"),
    (b"\xff\xfe\x00", r"method.json: not valid JSON \('utf-8' codec can't decode"),
    ("[1, 2]", r"method.json: expected a JSON object, got list"),
    (json.dumps({"format_version": 1}), r"method.json: method_state must be an object with "
                                        r"method \(a name\), config \(an object\) and step"),
    (json.dumps({"format_version": 1, "method_state": 5}), r"method.json: method_state must"),
    (json.dumps({"format_version": 9}), r"method.json: format_version 9 is not supported"),
])
def test_a_broken_method_file_is_named(saved, content, message):
    path = saved / "method.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=rf"^{str(saved)}/{message}"):
        load_pretrained(_model(), saved)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(method="nope"), r"unknown method 'nope'; available: [a-z_, -]*full, "),
    (lambda s: s["config"].update(rank="two"), r"rank='two' must be an int \(got str\)"),
    (lambda s: s["config"].update(lam=float("nan")), r"lam=nan must be a finite number"),
    (lambda s: s["config"].update(bogus=1), r"method 'sst' has no setting\(s\) \['bogus'\]"),
    (lambda s: s.update(step="3"), r"method_state must be an object"),
])
def test_a_refused_method_state_is_named(saved, change, message):
    meta = _method_json(saved)
    change(meta["method_state"])
    (saved / "method.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"^{str(saved)}/method.json: {message}"):
        load_pretrained(_model(), saved)


@pytest.mark.parametrize("cut", ["truncated", "garbage", "empty"])
def test_a_broken_weights_file_is_named(saved, cut):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not tensors" * 20,
                      "empty": b""}[cut])
    with pytest.raises(ValueError, match=rf"^{str(path)}: not a readable safetensors file"):
        load_pretrained(_model(), saved)


def test_weights_of_another_architecture_are_named(saved):
    with pytest.raises(ValueError, match=rf"^{str(saved)}/model.safetensors: its tensors do "
                                         r"not fit this model: .*size mismatch for 2.weight"):
        load_pretrained(_model(out=4), saved)


def test_a_missing_file_is_a_file_not_found_error(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="is not a sparse-spectral save"):
        load_pretrained(_model(), saved)
