"""Which evaluation of an SST layer is cheaper: a multiply-add count per training step.

For ``T`` tokens, a layer ``(m, n)`` with ``k = min(m, n)`` and rank ``r`` (forward and
backward together, see :mod:`~sparse_spectral.spectral.function`):

* factored: ``T (m + n) (2k + 3r)``
* composed: ``3 T m n + m n (2k + 3r)`` (a dense layer's ``3 T m n`` plus composing ``W``
  and reading ``s``'s gradient off ``G``)

The composed form wins once ``T`` is a small multiple of ``k`` (for a square layer at
``r = k / 8``: ``T > 1.36 k``), which is the usual pre-training regime of thousands of
tokens per step; the factored form wins for small batches and inference-sized calls.
"""

from __future__ import annotations

FORWARD_MODES = ("auto", "factored", "composed")


def factored_cost(tokens: int, m: int, n: int, k: int, r: int) -> int:
    """Multiply-adds of one forward + backward pass in factored form."""
    return tokens * (m + n) * (2 * k + 3 * r)


def composed_cost(tokens: int, m: int, n: int, k: int, r: int) -> int:
    """Multiply-adds of one forward + backward pass in composed form."""
    return 3 * tokens * m * n + m * n * (2 * k + 3 * r)


def choose_mode(tokens: int, m: int, n: int, k: int, r: int, setting: str = "auto") -> str:
    """``"factored"`` or ``"composed"``: ``setting`` itself unless it is ``"auto"``.

    Args:
        tokens: rows of the flattened input, ``T``.
        m, n, k, r: output and input features, ``min(m, n)``, active rank.
        setting: one of :data:`FORWARD_MODES`.
    """
    if setting not in FORWARD_MODES:
        raise ValueError(f"forward_mode={setting!r} is unknown; "
                         f"allowed: {', '.join(FORWARD_MODES)}")
    if setting != "auto":
        return setting
    cheaper = composed_cost(tokens, m, n, k, r) < factored_cost(tokens, m, n, k, r)
    return "composed" if cheaper else "factored"
