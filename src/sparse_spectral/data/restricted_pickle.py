"""Read the graph data sets' pickles without letting them run code.

A pickle names Python globals (``module.name``) and calls them while it loads; a hostile file
can name ``os.system``. :class:`RestrictedUnpickler` resolves a global only when its exact
``(module, name)`` pair is in an allow-list and otherwise raises ``pickle.UnpicklingError``
naming the refused global. The allow-lists below hold exactly the globals found in the
reference files by reading their opcodes with :mod:`pickletools` (never by loading them):

* ``airport.p`` (protocol 3): ``networkx.classes.graph.Graph``, ``builtins.dict``,
  ``networkx.classes.reportviews.NodeView``.
* Planetoid ``ind.<name>.{x,tx,allx}`` (protocol 2): ``scipy.sparse.csr.csr_matrix``,
  ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``;
  ``ind.<name>.{y,ty,ally}``: the three numpy globals; ``ind.<name>.graph``:
  ``collections.defaultdict`` and ``__builtin__.list``.

The networkx and scipy classes are not imported at all: each maps to an inert
:class:`PickledObject` that only records the state the pickle gives it, and the loaders read
that state as plain dicts and arrays. So loading runs no networkx or scipy code and works
whatever networkx version wrote the file. numpy arrays are rebuilt by numpy itself, with
object dtypes refused (an object array could smuggle arbitrary objects).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


class PickledObject:
    """Inert stand-in for a pickled class instance: keeps its constructor args and state.

    Attributes:
        args: positional arguments the pickle passed to ``cls.__new__`` (``NEWOBJ``).
        state: the object's ``__dict__`` (or whatever ``BUILD`` passed), ``None`` if absent.
    """

    def __new__(cls, *args: Any) -> PickledObject:
        # NEWOBJ calls only __new__, REDUCE calls the class: record the arguments either way.
        self = super().__new__(cls)
        self.args = args
        self.state = None
        return self

    def __init__(self, *args: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(qualname: str) -> type[PickledObject]:
    """A fresh :class:`PickledObject` subclass named after the class it replaces."""
    return type(qualname.rsplit(".", 1)[-1], (PickledObject,), {"replaces": qualname})


def _reconstruct_function() -> Callable[..., Any]:
    """numpy's array reconstructor, wherever this numpy version keeps it."""
    return np.array(0).__reduce__()[0]


def _safe_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the pickle, refusing object dtypes."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refused numpy dtype {dtype!r}: object arrays are not "
                                     f"allowed in a data file")
    return dtype


_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_function(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_function(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}

#: Globals allowed in the Airport networkx pickle.
AIRPORT_GLOBALS: Mapping[tuple[str, str], Any] = {
    ("networkx.classes.graph", "Graph"): _stand_in("networkx.classes.graph.Graph"),
    ("networkx.classes.reportviews", "NodeView"): _stand_in(
        "networkx.classes.reportviews.NodeView"),
    ("builtins", "dict"): dict,
}

#: Globals allowed in the Planetoid ``ind.*`` pickles (written by Python 2, hence
#: ``__builtin__``; Python 3 writers would say ``builtins``).
PLANETOID_GLOBALS: Mapping[tuple[str, str], Any] = {
    **_NUMPY,
    ("scipy.sparse.csr", "csr_matrix"): _stand_in("scipy.sparse.csr.csr_matrix"),
    ("scipy.sparse._csr", "csr_matrix"): _stand_in("scipy.sparse._csr.csr_matrix"),
    ("collections", "defaultdict"): collections.defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals.

    Args:
        file: binary file object to read.
        allowed: ``{(module, name): object}``; the pickle's reference to ``module.name``
            resolves to ``object`` (which may be an inert stand-in for the real class).
        source: what to call the file in error messages.
        **kwargs: passed to :class:`pickle.Unpickler` (e.g. ``encoding="latin1"``).

    Raises:
        pickle.UnpicklingError: from :meth:`load`, when the pickle names any other global.
    """

    def __init__(self, file: io.BufferedIOBase, allowed: Mapping[tuple[str, str], Any], *,
                 source: str = "pickle", **kwargs: Any):
        super().__init__(file, **kwargs)
        self._allowed = dict(allowed)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in self._allowed))
            raise pickle.UnpicklingError(
                f"{self._source}: refused global '{module}.{name}'; this loader allows only "
                f"{allowed}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self._source}: refused persistent id {pid!r}")


def load_restricted(path: str | os.PathLike, allowed: Mapping[tuple[str, str], Any],
                    **kwargs: Any) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (see there for ``allowed``)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, allowed, source=str(Path(path)), **kwargs).load()


def loads_restricted(data: bytes, allowed: Mapping[tuple[str, str], Any],
                     **kwargs: Any) -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, **kwargs).load()
