"""Small result files of every kind, shaped like what the tasks write, for the report tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

MIB = 2 ** 20


def accounting(i: int) -> dict:
    """The common per-method keys, derived from ``i``."""
    return {"trainable_params": 1000 * (i + 1), "total_params": 10_000,
            "grad_optimizer_bytes": (i + 1) * MIB, "step_time_s": 0.01 * (i + 1)}


def curve(i: int, accuracy: bool = False) -> list[dict]:
    return [{"step": s, "val_loss": 3.0 - s / 100 - i / 10,
             **({"val_accuracy": 0.5 + s / 1000} if accuracy else {})} for s in (10, 50, 100)]


def lm_results(ppl: dict[str, float]) -> dict:
    """An LM comparison with the given validation perplexities."""
    methods = {name: {**accounting(i), "val_loss": math.log(value), "val_ppl": value,
                      "test_ppl": value + 1.0, "curve": curve(i)}
               for i, (name, value) in enumerate(ppl.items())}
    return {"task": "lm", "title": "lm test", "settings": {"rank": 4}, "methods": methods}


def mt_results(bleu: dict[str, float]) -> dict:
    """A translation comparison with the given test BLEU scores."""
    methods = {name: {**accounting(i), "val_loss": 2.0, "val_ppl": math.exp(2.0),
                      "curve": curve(i), "test_bleu": value, "bleu_signature": "sig",
                      "decoding": {"beam_size": 2, "length_penalty": 0.6},
                      "examples": [{"source": "ein Hund", "reference": "a dog",
                                    "hypothesis": f"dog {name}"}]}
               for i, (name, value) in enumerate(bleu.items())}
    return {"task": "mt", "title": "mt test", "settings": {}, "methods": methods}


def images_results(accuracy: dict[str, float], val_ppl: bool = False) -> dict:
    """An image comparison; ``val_ppl`` adds the key older files carry."""
    methods = {}
    for i, (name, value) in enumerate(accuracy.items()):
        methods[name] = {**accounting(i), "val_loss": 0.5 + i / 10, "val_accuracy": value,
                         "test_accuracy": value, "test_loss": 0.6, "curve": curve(i, True)}
        if val_ppl:
            methods[name]["val_ppl"] = math.exp(methods[name]["val_loss"])
    return {"task": "images", "title": "images test", "settings": {"seeds": [0]},
            "methods": methods}


def graph_results(task: str, scores: dict[str, float]) -> dict:
    """A graph comparison (``task`` "nc" or "lp"); every metric mean is the method's score."""
    metrics = ("acc", "f1") if task == "nc" else ("roc", "ap")
    methods = {}
    for i, (name, value) in enumerate(scores.items()):
        entry = {**accounting(i), "best_epoch": {"mean": 5.0, "std": 0.0},
                 "runs": [{"seed": 1, "curve": [{"epoch": e, "val_score": value} for e in (1, 2)],
                           "embedding_2d": [[0.1, 0.2], [-0.3, 0.4]]}]}
        for m in metrics:
            entry[f"val_{m}"] = entry[f"test_{m}"] = {"mean": value, "std": 0.01}
        methods[name] = entry
    return {"task": "graph", "title": "graph test", "settings": {"task": task},
            "notes": ["a note"], "methods": methods}


def ablation_data() -> dict:
    """A three-variant ablation of an image task."""
    def variant(method: str, value: float) -> dict:
        return {"method": method, "group": "method", "options": {}, "lr": 1e-3,
                "metric": value, "step_time_s": 0.01, "trainable_params": 100,
                "curve": [], "grad_norm": [{"step": s, "grad_norm": 1.0 + s} for s in (1, 2, 3)],
                "grad_norm_corr_full": None if method == "full" else 0.9}

    return {"task": "images", "metric": "test_accuracy", "higher_is_better": True,
            "settings": {"dataset": "digits"}, "order": ["sst", "full"],
            "variants": {"sst": variant("sst", 0.8), "full": variant("full", 0.9)}}


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
