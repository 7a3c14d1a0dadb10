"""The restricted unpickler that reads the published checkpoints' pickled arrays safely.

The original code saved its global models with ``np.savez`` on Python objects, so their ``.npy``
members are pickles: a Flower ``Parameters`` record, or an object array of arrays. Unpickling runs
whatever globals a file names; here only the ``Parameters`` record (a stand-in class, so Flower
need not be installed) and what numpy needs to rebuild arrays are admitted, and any other global
is refused before anything runs.
"""

from __future__ import annotations

import functools
import pickle
import zipfile
from typing import Any

import numpy as np

_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class UnsafePickleError(ValueError):
    """A pickled member asks for what is not admitted, or cannot be read."""


class FlowerParameters:
    """Stand-in for flwr's ``Parameters`` record (``.npy`` blobs), so flwr need not be installed."""

    tensors: list[bytes]
    tensor_type: str

    def __setstate__(self, state: object) -> None:
        # Dataclass pickles carry a plain dict; slotted ones carry (dict | None, slots dict).
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict) or set(state) != {"tensors", "tensor_type"}:
            raise pickle.UnpicklingError("Parameters record with unexpected fields")
        self.tensors = state["tensors"]
        self.tensor_type = state["tensor_type"]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Protocol 2 writes bytes as _codecs.encode(text, "latin1"): admit exactly that, no codec.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 byte strings are admitted")
    return text.encode("latin-1")


@functools.cache
def _admitted_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.26
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    admitted: dict[tuple[str, str], Any] = {
        ("flwr.common.typing", "Parameters"): FlowerParameters,  # flwr 0.18-1.x
        ("flwr.compat.common.typing", "Parameters"): FlowerParameters,  # where flwr 1.4x keeps it
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for package in ("numpy.core", "numpy._core"):  # the names numpy 1.x and 2.x pickles use
        admitted[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        admitted[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        admitted[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return admitted


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolve only the admitted globals; any other name is refused before anything runs."""

    def find_class(self, module: str, name: str) -> Any:
        admitted = _admitted_globals().get((module, name))
        if admitted is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return admitted

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent reference")


def read_npz_member(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    """Read one ``.npy`` member of an open ``.npz``; object arrays go through the unpickler.

    Raises
    ------
    UnsafePickleError
        If the member asks for a global that is not admitted, is truncated or unreadable, is of
        an unknown ``.npy`` version, or does not unpickle to an array.
    """
    with zf.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        read_header = _NPY_HEADER_READERS.get(version)
        if read_header is None:
            raise UnsafePickleError(f"{member} has .npy version {version}; re-save it with numpy")
        if not read_header(fp)[2].hasobject:
            fp.seek(0)
            return np.lib.format.read_array(fp, allow_pickle=False)
        try:
            value = _RestrictedUnpickler(fp).load()
        except Exception as error:  # refused globals, truncation, bad arguments to numpy
            raise UnsafePickleError(f"unsafe or unreadable pickle in {member} ({error})") from None
    if not isinstance(value, np.ndarray):
        raise UnsafePickleError(f"{member} does not unpickle to an array")
    return value
