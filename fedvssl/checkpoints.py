"""Global checkpoints: our per-round files, and every published layout, read safely.

Our format, ``round-{r}-weights.array.npz``, holds one plain numeric array per state-dict entry
of the full CtP model, named by its key, in state-dict order; it needs no pickle and is written
atomically. ``load_backbone_state`` also reads the layouts of the original code: ``.npz`` files
whose ``arr_0`` is a pickled Flower ``Parameters`` record or a 1-D object array of the model's
arrays in state-dict order (maybe followed by a metrics ``arr_1``, never read): 126 for CtP (the
Flower baseline's FedVSSL mode wrote 252), 124 for VCOP and 122 for Speed, the authors' other
FL-pre-trained pretexts; and ``.pth`` files holding ``{"state_dict": ...}`` with ``backbone.*``
keys, or a bare state dict.

Pickled content is read by the restricted unpickler of :mod:`fedvssl.restricted_pickle`, which
admits only the ``Parameters`` record and what numpy needs to rebuild arrays: any other global is
refused before anything runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import numpy as np
import torch

from CtP.backbone import backbone_state_spec
from fedvssl.restricted_pickle import FlowerParameters, UnsafePickleError, read_npz_member

log = logging.getLogger(__name__)

_ROUND_FILE = re.compile(r"round-(\d+)-weights\.array\.npz")
_PREFIX = "backbone."
_BACKBONE_ENTRIES = 120
_CTP_ENTRIES = 126  # backbone (120) then CtP head (6): the order of the published lists
_FLOWER_BUG_ENTRIES = 2 * _CTP_ENTRIES  # Flower FedVSSL mode: alpha*A concatenated with (1-alpha)*B
# The pretext of a published list, by its length: backbone (120) then the pretext's head.
_PRETEXT_OF_LENGTH = {_CTP_ENTRIES: "ctp", 124: "vcop", 122: "speed"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe or does not hold the expected weights."""


def _fail(path: Path, problem: str, remedy: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}; {remedy}")


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise _fail(path, "no such checkpoint file", "check the path")


# ---------------------------------------------------------------------------- our round files


def round_checkpoint_path(results_dir: Path, server_round: int) -> Path:
    """Return where the global model of ``server_round`` is saved.

    Parameters
    ----------
    results_dir : Path
        The run's ``fedvssl_results`` folder.
    server_round : int
        The round number (1-based).

    Returns
    -------
    Path
        ``results_dir / f"round-{server_round}-weights.array.npz"``.
    """
    return Path(results_dir) / f"round-{server_round}-weights.array.npz"


def latest_round_checkpoint(results_dir: Path) -> tuple[int, Path] | None:
    """Find the highest complete round checkpoint; temporary files of a write are ignored.

    Parameters
    ----------
    results_dir : Path
        The run's ``fedvssl_results`` folder (it may not exist yet).

    Returns
    -------
    tuple of (int, Path) or None
        The round and its file, or ``None`` when there is none.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return None
    rounds = [
        (int(match.group(1)), entry)
        for entry in results_dir.iterdir()
        if (match := _ROUND_FILE.fullmatch(entry.name)) and entry.is_file()
    ]
    return max(rounds, default=None)


def _numeric_array(path: Path, key: object, value: object) -> np.ndarray:
    array = np.asarray(value)
    if not isinstance(key, str) or not key:
        raise _fail(path, f"state key {key!r} is not a non-empty string", "name arrays by key")
    if array.dtype.kind not in "biuf":
        raise _fail(path, f"{key} has dtype {array.dtype}", "save plain numeric arrays only")
    return array


def _write_npz(stream: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def save_global_checkpoint(path: Path, state: Mapping[str, np.ndarray]) -> None:
    """Write a global model atomically in our format (uncompressed ``.npz``, no pickle).

    Parameters
    ----------
    path : Path
        Target file, normally ``round_checkpoint_path(results_dir, r)``.
    state : Mapping[str, np.ndarray]
        The full CtP state dict as arrays (``backbone.*`` then ``head.*``), in order.

    Raises
    ------
    CheckpointError
        If the state is empty, a key is not a string or an array is not plain numeric.
        Nothing is written then; a failed write leaves no partial file behind.
    """
    path = Path(path)
    arrays = {key: _numeric_array(path, key, value) for key, value in state.items()}
    if not arrays:
        raise _fail(path, "the state to save is empty", "pass the model's state dict")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            _write_npz(stream, arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where folders can be synced
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def load_global_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Read a global model written by ``save_global_checkpoint``.

    Parameters
    ----------
    path : Path
        A ``round-{r}-weights.array.npz`` file.

    Returns
    -------
    dict of str to np.ndarray
        Arrays by state-dict key, in the saved order.

    Raises
    ------
    CheckpointError
        If the file is missing, empty, or not an ``.npz`` of plain arrays.
    """
    path = Path(path)
    _check_exists(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            state = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _fail(
            path,
            f"not a readable round checkpoint ({' '.join(str(error).split())})",
            "it is damaged or was not written by fedvssl.main",
        ) from None
    if not state:
        raise _fail(path, "the checkpoint holds no arrays", "point to a round checkpoint")
    check_finite(path, state)
    return state


def check_finite(path: Path, state: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Refuse a loaded state holding NaN or inf: a diverged model, or a damaged file.

    Raises
    ------
    CheckpointError
        Naming the file and its first non-finite entry.
    """
    for key, array in state.items():
        values = array.detach().cpu().float().numpy() if isinstance(array, torch.Tensor) else array
        if not np.isfinite(values).all():
            raise _fail(
                path,
                f"{key} holds non-finite values (NaN or inf)",
                "the model diverged or the file is damaged: use another checkpoint",
            )


# ---------------------------------------------------------------- any layout -> backbone state


def _member(path: Path, zf: zipfile.ZipFile, member: str) -> np.ndarray:
    """Read one ``.npy`` member of ``path``; an unsafe or unreadable one is a CheckpointError."""
    try:
        return read_npz_member(zf, member)
    except UnsafePickleError as error:
        raise _fail(path, str(error), "do not load this file") from None


def _decode_parameters(path: Path, record: FlowerParameters) -> list[np.ndarray]:
    if record.tensor_type != "numpy.ndarray" or not isinstance(record.tensors, list):
        raise _fail(path, "the Parameters record holds no numpy tensors", "check the file")
    arrays = []
    for index, blob in enumerate(record.tensors):
        try:
            arrays.append(np.load(io.BytesIO(blob), allow_pickle=False))
        except (TypeError, ValueError, OSError, EOFError) as error:
            raise _fail(path, f"tensor {index} is not a plain .npy ({error})", "check it") from None
    return arrays


def _entries_of_arr0(path: Path, arr_0: np.ndarray) -> list[object]:
    """Return the model entries of a published ``arr_0`` (Parameters record or object array)."""
    if arr_0.dtype.hasobject and arr_0.ndim == 0 and isinstance(arr_0.item(), FlowerParameters):
        return list(_decode_parameters(path, arr_0.item()))
    if arr_0.dtype.hasobject and arr_0.ndim == 1:
        return list(arr_0)
    raise _fail(
        path,
        f"arr_0 ({arr_0.dtype}, shape {arr_0.shape}) is neither a Parameters record nor a "
        "1-D list of arrays",
        "point to a FedVSSL global checkpoint",
    )


def _as_tensor(path: Path, name: str, value: object, shape: tuple[int, ...]) -> torch.Tensor:
    tensor: torch.Tensor | None = None
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, np.ndarray | np.generic | float | int):
        array = np.asarray(value)
        if array.dtype.kind in "iuf":
            native = array.dtype.newbyteorder("=")
            tensor = torch.from_numpy(np.require(array, native, requirements=("C", "W")))
    if tensor is None or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise _fail(path, f"{name} is not a numeric array", "check the file's layout")
    if tuple(tensor.shape) != shape:
        raise _fail(
            path,
            f"{name} has shape {tuple(tensor.shape)}, expected {shape}",
            "the file does not hold an R3D-18 backbone of the CtP layout",
        )
    check_finite(path, {name: tensor})
    if name.endswith("num_batches_tracked"):  # averaged counts were saved as float64
        return torch.round(tensor.double()).to(torch.int64)
    return tensor.to(torch.float32).contiguous()


def _spec_for(path: Path, stem_weight: object) -> list[tuple[str, tuple[int, ...]]]:
    """Return the backbone's (name, shape) list, its width read off ``stem.conv.weight``."""
    shape = tuple(getattr(stem_weight, "shape", ()))
    if len(shape) != 5 or shape[0] < 1:
        raise _fail(
            path,
            f"stem.conv.weight has shape {shape}, expected (width, 3, 3, 7, 7)",
            "the file does not hold an R3D-18 backbone of the CtP layout",
        )
    return backbone_state_spec(int(shape[0]))


def _backbone_from_list(path: Path, entries: list[object]) -> dict[str, torch.Tensor]:
    if len(entries) == _FLOWER_BUG_ENTRIES:
        log.warning(
            "%s holds %d arrays (the Flower baseline's FedVSSL mode): using the first %d, which "
            "that code scaled by alpha (it concatenated alpha*FedAvg with the loss-based half)",
            path,
            len(entries),
            _CTP_ENTRIES,
        )
        entries = entries[:_CTP_ENTRIES]
    if len(entries) not in _PRETEXT_OF_LENGTH:
        raise _fail(
            path,
            f"holds {len(entries)} arrays, expected {_CTP_ENTRIES} (CtP, or "
            f"{_FLOWER_BUG_ENTRIES}), 124 (VCOP) or 122 (Speed)",
            "point to a FedVSSL global checkpoint",
        )
    log.info(
        "%s: %d arrays, a %s model; reading its %d backbone arrays",
        path, len(entries), _PRETEXT_OF_LENGTH[len(entries)], _BACKBONE_ENTRIES,
    )  # fmt: skip
    spec = _spec_for(path, entries[0])
    return {
        name: _as_tensor(path, name, entry, shape)
        for (name, shape), entry in zip(spec, entries, strict=False)
    }


def _backbone_from_named(path: Path, state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    keys = {key.removeprefix("module."): key for key in state}
    if any(key.startswith(_PREFIX) for key in keys):
        named = {
            k.removeprefix(_PREFIX): state[v] for k, v in keys.items() if k.startswith(_PREFIX)
        }
    else:  # a bare backbone state dict
        named = {k: state[v] for k, v in keys.items()}
    if "stem.conv.weight" not in named:
        raise _fail(path, "no backbone.stem.conv.weight entry", "point to a CtP/R3D checkpoint")
    spec = _spec_for(path, named["stem.conv.weight"])
    expected = dict(spec)
    for name in named:
        if name not in expected:
            raise _fail(path, f"unexpected backbone entry {name}", "check the model layout")
    for name, _ in spec:
        if name not in named:
            raise _fail(path, f"missing backbone entry {name}", "check the model layout")
    return {name: _as_tensor(path, name, named[name], shape) for name, shape in spec}


def _backbone_from_npz(path: Path, zf: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    members = {member.removesuffix(".npy"): member for member in zf.namelist()}
    wanted = [key for key in members if key.removeprefix("module.").startswith(_PREFIX)]
    if wanted:
        return _backbone_from_named(path, {key: _member(path, zf, members[key]) for key in wanted})
    if "arr_0" in members:  # arr_1, when present, is the research code's metrics: never read
        arr_0 = _member(path, zf, members["arr_0"])
        return _backbone_from_list(path, _entries_of_arr0(path, arr_0))
    raise _fail(
        path,
        f"neither backbone.* arrays nor arr_0 among {sorted(members)[:4]}",
        "point to a FedVSSL global checkpoint",
    )


def _backbone_from_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types; all mean "not a tensors-only file"
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise _fail(
                path, f"refused: the torch file asks for {refused.group(1)}", "do not load it"
            ) from None
        raise _fail(
            path,
            "neither an .npz checkpoint nor a torch file of tensors",
            "point to a round-N .npz or a .pth holding a state dict",
        ) from None
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise _fail(path, "holds no state dict", "point to a .pth holding a state dict")
    return _backbone_from_named(path, state)


def load_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the 120 backbone tensors from any supported checkpoint layout.

    Parameters
    ----------
    path : str or Path
        Our ``round-{r}-weights.array.npz``; a published ``round-540.npz`` (Parameters record or
        object array, maybe with a metrics ``arr_1``; 126 or 252 arrays of CtP, 124 of VCOP, 122
        of Speed); or a ``.pth`` holding
        ``{"state_dict": ...}`` or a bare state dict (``module.`` prefixes are stripped).

    Returns
    -------
    dict of str to torch.Tensor
        Backbone tensors named as in CtP without the ``backbone.`` prefix, in state-dict order:
        floats as float32, ``num_batches_tracked`` as 0-d int64.

    Raises
    ------
    CheckpointError
        If the file is missing, unsafe, of an unknown layout, or an entry does not fit the
        backbone (the message names the first offending entry).
    """
    path = Path(path)
    _check_exists(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                if zf.namelist() and all(m.endswith(".npy") for m in zf.namelist()):
                    return _backbone_from_npz(path, zf)
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise _fail(
                path, f"unreadable archive ({error})", "re-download or re-save it"
            ) from None
    return _backbone_from_torch(path)
