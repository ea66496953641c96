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
object dtypes refused (an object array could smuggle arbitrary objects): every way a pickle
can name a dtype is checked (``numpy.dtype``, and the dtype arguments of ``ndarray`` and
``_reconstruct``, which take a bare ``'O'`` too); a dtype's pickled state (``BUILD``, which
could set its object flags after construction) must be the canonical state of that dtype,
which is why the unpickler is pickle's pure-Python one (the C one offers no hook there; the
files are small); and the loaded value is walked once more for object arrays. Any other
failure while loading (numpy refusing a forged array state) is an ``UnpicklingError``
naming the file.
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


def _refused(dtype: Any) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"refused numpy dtype {dtype!r}: object arrays are not "
                                  f"allowed in a data file")


def _safe_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the pickle, refusing object dtypes."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise _refused(dtype)
    return dtype


def _checked(dtype: Any) -> Any:
    """A dtype argument (a dtype, or text such as ``'O'``), refused if it makes objects."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as err:
        raise pickle.UnpicklingError(f"refused numpy dtype argument {dtype!r}: {err}") from None
    if resolved.hasobject:
        raise _refused(resolved)
    return dtype


def _safe_ndarray(shape: Any = (), dtype: Any = float, *args: Any) -> np.ndarray:
    """``numpy.ndarray(shape, dtype, ...)`` for the pickle, refusing object dtypes."""
    return np.ndarray(shape, _checked(dtype), *args)


_RECONSTRUCT = _reconstruct_function()


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array reconstructor for the pickle: plain arrays, no object dtype."""
    if subtype is not _safe_ndarray:
        raise pickle.UnpicklingError(f"refused array subtype {subtype!r}")
    return _RECONSTRUCT(np.ndarray, shape, _checked(dtype))


_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): _safe_ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


def _refuse_object_arrays(value: Any, source: str, seen: set[int] | None = None) -> None:
    """Walk a loaded value (containers, stand-ins' args and state) for object arrays."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise pickle.UnpicklingError(f"{source}: {_refused(value.dtype)}")
        return
    if isinstance(value, np.dtype):
        if value.hasobject:
            raise pickle.UnpicklingError(f"{source}: {_refused(value)}")
        return
    if isinstance(value, PickledObject):
        children = [value.args, value.state]
    elif isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    else:
        return
    for child in children:
        _refuse_object_arrays(child, source, seen)

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


def _load_build(self: RestrictedUnpickler) -> None:
    """``BUILD``, refusing a numpy dtype state other than the dtype's own (forged flags)."""
    inst, state = self.stack[-2], self.stack[-1]
    if isinstance(inst, np.dtype) and state != inst.__reduce__()[2]:
        raise pickle.UnpicklingError(f"{self._source}: refused a forged state for numpy dtype "
                                     f"{inst!r}: {state!r}")
    pickle._Unpickler.load_build(self)


class RestrictedUnpickler(pickle._Unpickler):
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

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}

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

    def load(self) -> Any:
        """Load, then refuse any object array that a forged dtype state produced.

        Raises:
            pickle.UnpicklingError: a refused global or dtype, or any other failure while
                loading (named with the file).
        """
        try:
            value = super().load()
        except pickle.UnpicklingError:
            raise
        except Exception as err:  # numpy refusing a forged state, a truncated file, ...
            raise pickle.UnpicklingError(f"{self._source}: not a valid data pickle "
                                         f"({type(err).__name__}: {err})") from None
        _refuse_object_arrays(value, self._source)
        return value


def load_restricted(path: str | os.PathLike, allowed: Mapping[tuple[str, str], Any],
                    **kwargs: Any) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (see there for ``allowed``)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, allowed, source=str(Path(path)), **kwargs).load()


def loads_restricted(data: bytes, allowed: Mapping[tuple[str, str], Any],
                     **kwargs: Any) -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), allowed, **kwargs).load()
