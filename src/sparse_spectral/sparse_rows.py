"""A constant sparse matrix for linear layers and graph aggregation: CSR products both ways.

Graph models feed a fixed bag-of-words matrix to their first linear layer (Cora: 2,708 x
1,434 lifted features, about 1.3% non-zero; CiteSeer: 3,327 x 3,704) and aggregate over a
fixed normalised adjacency. As a dense tensor, ``X W^T`` and the weight gradient ``G^T X``
are most of a training step although they touch mostly zeros; as torch's sparse COO, ``A h``
and its backward ``A^T g`` are several times slower than in CSR. :class:`SparseRows` keeps
``X`` in CSR together with the CSR of ``X^T`` (and the permutation between their value
orders), so every product costs ``nnz`` per output column, and per-entry rescaling (dropout)
re-uses the structure without sorting.

A :class:`SparseRows` is a fixed operand (:mod:`sparse_spectral.linear`: ``x @ M``,
``G @ x``, ``.shape``, ``.to_dense()``), so the layers that take fixed operands (``nn.Linear``
through :func:`~sparse_spectral.linear.apply_linear`, LoRA's and SST's layers) compute what
they compute for ``x.to_dense()``, up to float rounding, without knowing this type; any
other module gets the dense matrix. Nothing flows back into ``X``: it is data, never a
parameter.
"""

from __future__ import annotations

import warnings

import torch

#: Densest matrix worth holding sparse: above it the dense product is as cheap.
SPARSE_SHARE = 0.25


def _csr(matrix: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return matrix.to_sparse_csr()


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                shape) -> torch.Tensor:
    # The indices come from a valid CSR tensor: checking them again costs a pass.
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class SparseRows:
    """An ``(N, n)`` matrix held as CSR and as the CSR of its transpose.

    Args:
        matrix: ``(N, n)`` float tensor, dense (its non-zero pattern is kept) or sparse
            COO/CSR (its stored entries are kept).

    Attributes:
        shape, dtype, device: those of the dense matrix.
        values: ``(nnz,)`` non-zero values in row-major order (the order of
            ``matrix.reshape(-1).nonzero()`` for a dense one).
    """

    def __init__(self, matrix: torch.Tensor):
        if matrix.dim() != 2:
            raise ValueError(f"SparseRows needs a 2-D matrix, got shape {tuple(matrix.shape)}")
        if matrix.requires_grad:
            raise ValueError("SparseRows holds data: the matrix must not require a gradient")
        self._rows = _csr(matrix)
        num_rows, num_cols = matrix.shape
        crow, col = self._rows.crow_indices(), self._rows.col_indices()
        row = torch.repeat_interleave(torch.arange(num_rows, device=matrix.device), crow.diff())
        # Position j of X^T's CSR values holds entry _perm[j] of X's row-major values.
        self._perm = torch.argsort(col * num_rows + row, stable=True)
        counts = torch.bincount(col, minlength=num_cols)
        crow_t = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self._cols = _csr_tensor(crow_t, row[self._perm], self._rows.values()[self._perm],
                                 (num_cols, num_rows))
        self.shape = matrix.shape
        self.dtype, self.device = matrix.dtype, matrix.device

    @property
    def values(self) -> torch.Tensor:
        return self._rows.values()

    def with_values(self, values: torch.Tensor) -> SparseRows:
        """The same pattern with new ``(nnz,)`` values (row-major order); shares indices."""
        if values.shape != self.values.shape:
            raise ValueError(f"values has shape {tuple(values.shape)}; the pattern has "
                             f"{self.values.numel()} entries")
        out = object.__new__(SparseRows)
        out.shape, out.dtype, out.device, out._perm = self.shape, self.dtype, self.device, \
            self._perm
        out._rows = _csr_tensor(self._rows.crow_indices(), self._rows.col_indices(), values,
                                self.shape)
        out._cols = _csr_tensor(self._cols.crow_indices(), self._cols.col_indices(),
                                values[self._perm], (self.shape[1], self.shape[0]))
        return out

    def mm(self, h: torch.Tensor) -> torch.Tensor:
        """``X h``: ``h (n, d)`` -> ``(N, d)`` (no gradient)."""
        return self._rows @ h

    def t_mm(self, grad: torch.Tensor) -> torch.Tensor:
        """``X^T G``: ``grad (N, m)`` -> ``(n, m)`` (no gradient)."""
        return self._cols @ grad

    def __matmul__(self, h: torch.Tensor) -> torch.Tensor:
        """``X h``: ``h (n, d)`` -> ``(N, d)``, differentiable in ``h`` (``X^T g``)."""
        return _Product.apply(h, self, False)

    def __rmatmul__(self, g: torch.Tensor) -> torch.Tensor:
        """``g X``: ``g (j, N)`` -> ``(j, n)`` as ``(X^T g^T)^T``, differentiable in ``g``."""
        return _Product.apply(g.t(), self, True).t()

    @staticmethod
    def worth_it(x: torch.Tensor) -> bool:
        """Whether ``x`` is a 2-D data matrix sparse enough (:data:`SPARSE_SHARE`)."""
        return (x.dim() == 2 and not x.requires_grad and x.numel() > 0
                and int(torch.count_nonzero(x)) <= SPARSE_SHARE * x.numel())

    def to_dense(self) -> torch.Tensor:
        """The ``(N, n)`` dense matrix."""
        return self._rows.to_dense()


class _Product(torch.autograd.Function):
    """``X h`` (or ``X^T h``) with the gradient for ``h``; none for the data ``X``.

    The product runs in ``X``'s dtype with autocast off (torch has no bf16 CSR product on
    the CPU, and a sparse sum is where low precision hurts most); under autocast a bf16
    ``h`` is read in that dtype and its gradient is returned as bf16 again.
    """

    @staticmethod
    def forward(ctx, h, x: SparseRows, transposed: bool):
        ctx.x, ctx.transposed, ctx.h_dtype = x, transposed, h.dtype
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.to(x.dtype)
            return x.t_mm(h) if transposed else x.mm(h)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        x = ctx.x
        with torch.autocast(device_type=grad.device.type, enabled=False):
            grad = grad.to(x.dtype)
            out = x.mm(grad) if ctx.transposed else x.t_mm(grad)
        return out.to(ctx.h_dtype), None, None
