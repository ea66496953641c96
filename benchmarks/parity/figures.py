"""Flatten a results.json / ablation.json into its figures, for refactor parity checks.

    python benchmarks/parity/figures.py digest RUN_DIR OUT.json     # write the figures
    python benchmarks/parity/figures.py check BEFORE.json RUN_DIR   # compare, exit 1 on a change

Figures are every number under the file's ``methods`` / ``variants`` entries (metrics, curves,
spectra, pruning curves, per-seed runs), except timings, which differ run to run.
Comparison is exact (bit-identical floats): the refactor must not change what is computed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TIMING_WORDS = ("time", "seconds", "tokens_per_s", "wall")
# The 2-D embedding views (27k numbers) are left out to keep the digest small; the metrics
# and curves computed from the same embeddings are in it.
LEFT_OUT = ("embedding_2d",)
FILES = ("results.json", "ablation.json")


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            if not any(word in key for word in TIMING_WORDS) and key not in LEFT_OUT:
                _flatten(value[key], f"{prefix}.{key}", out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def figures(run_dir: Path) -> dict[str, dict[str, float]]:
    """``{sub-folder: {path: number}}`` for every results/ablation file under ``run_dir``."""
    found = {}
    for name in FILES:
        for path in sorted(run_dir.glob(f"*/{name}")):
            data = json.loads(path.read_text())
            flat: dict[str, float] = {}
            _flatten(data.get("methods", data.get("variants")), "", flat)
            found[path.parent.name] = flat
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("digest", "check"):
        print(__doc__)
        return 2
    if argv[0] == "digest":
        Path(argv[2]).write_text(json.dumps(figures(Path(argv[1])), indent=0, sort_keys=True))
        return 0
    before = json.loads(Path(argv[1]).read_text())
    after = figures(Path(argv[2]))
    bad = 0
    for task in sorted(set(before) | set(after)):
        old, new = before.get(task, {}), after.get(task, {})
        missing = sorted(set(old) - set(new))
        changed = [k for k in old if k in new and old[k] != new[k]]
        status = "identical" if not missing and not changed else "DIFFERENT"
        print(f"{task}: {len(old)} figures, {status}"
              + (f"; {len(changed)} changed, e.g. {changed[:3]}" if changed else "")
              + (f"; {len(missing)} missing, e.g. {missing[:3]}" if missing else ""))
        bad += bool(missing or changed)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
