"""A user's own text: one ``.txt`` file, or a folder of them, split 90/5/5.

Reading. A file is read as UTF-8. A folder contributes every ``*.txt`` file below it
(recursively), in sorted order of their paths relative to the folder, each followed by a
newline if it lacks one, concatenated.

Split (:func:`split_text`). The first ~90 % of the characters are train, the next ~5 %
validation, the last ~5 % test. Each cut is moved to the nearest line start (a position
right after a ``\\n``), so no line is split, when one lies between the neighbouring cuts
and within 2.5 % of the text's length (half a held-out share) of the exact cut; otherwise
(e.g. very long lines) the cut stays at the exact character. Every split is non-empty, so
the text needs at least 3 characters.
"""

from __future__ import annotations

import bisect
import os
import re
from pathlib import Path

SHARES = (0.90, 0.05, 0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"cannot read {path} as UTF-8 text: {error}") from error
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def read_text(path: str | os.PathLike) -> str:
    """The text of a ``.txt`` file, or of all ``*.txt`` files below a folder (sorted).

    Args:
        path: a file or a folder.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a file is unreadable or not UTF-8, a folder has no ``*.txt`` file, or
            the text is empty (whitespace only).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"text path {str(path)!r} does not exist; pass a .txt file or a "
                                f"folder of .txt files")
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise ValueError(f"text folder {str(path)!r} contains no *.txt files")
        parts = [_read(p) for p in files]
        text = "".join(part if part.endswith("\n") else part + "\n" for part in parts)
    else:
        text = _read(path)
    if not text.strip():
        raise ValueError(f"text path {str(path)!r} holds no text (empty or whitespace only)")
    return text


def _line_starts(text: str) -> list[int]:
    """Positions right after each ``\\n`` (sorted)."""
    return [m.end() for m in re.finditer("\n", text)]


def _snap(target: int, low: int, high: int, radius: int, starts: list[int]) -> int:
    """The line start nearest ``target`` strictly inside ``(low, high)`` and at most
    ``radius`` away, else ``target``."""
    low, high = max(low, target - radius - 1), min(high, target + radius + 1)
    inside = starts[bisect.bisect_right(starts, low): bisect.bisect_left(starts, high)]
    if not inside:
        return target
    j = bisect.bisect_left(inside, target)
    candidates = inside[max(j - 1, 0): j + 1]
    return min(candidates, key=lambda s: (abs(s - target), s))


def split_text(text: str) -> tuple[str, str, str]:
    """``(train, validation, test)``: ~90/5/5 % of the characters, cut at line starts.

    Args:
        text: the whole text, at least 3 characters.

    Returns:
        Three non-empty strings whose concatenation is ``text``.
    """
    n = len(text)
    if n < 3:
        raise ValueError(f"text of {n} characters is too short to split into train, "
                         f"validation and test (need at least 3)")
    # Exact character targets, kept strictly increasing so that every split is non-empty.
    first = min(max(1, int(n * SHARES[0])), n - 2)
    second = min(max(first + 1, int(n * (SHARES[0] + SHARES[1]))), n - 1)
    starts = _line_starts(text)
    radius = int(n * SHARES[2] / 2)  # never move a cut by more than half a held-out share
    second = _snap(second, first, n, radius, starts)
    first = _snap(first, 0, second, radius, starts)
    return text[:first], text[first:second], text[second:]


def load_text(path: str | os.PathLike) -> tuple[str, str, str]:
    """``(train, validation, test)`` of the text at ``path`` (see :func:`read_text`)."""
    return split_text(read_text(path))
