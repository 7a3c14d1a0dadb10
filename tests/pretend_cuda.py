"""Pretend CUDA on a CPU-only machine: CPU tensors that report ``cuda:0`` and keep CUDA's rules.

The package takes ``device.type == "cuda"`` branches (bf16 autocast, pinned memory, decoding and
augmenting clips on the device, the GPU's ``pin_memory``/``non_blocking`` copies) that a test on
``device="cpu"`` never enters. :class:`PretendCuda` makes a CPU-only process take them, with real
CPU tensors doing the arithmetic, so a whole training step (backward included) runs:

- ``torch.cuda.is_available()`` (and ``torch.accelerator``'s view of it) says yes, so the
  package's own device choice picks ``cuda``;
- a :class:`~torch.overrides.TorchFunctionMode` tags every tensor made with ``device="cuda"`` or
  moved there (``.to``, ``.cuda``, ``Module.to``), and every result of an op on a tagged tensor;
  a tagged tensor answers ``.device`` with ``cuda:0``, ``.is_cuda`` with True;
- an op that mixes tagged tensors with CPU tensors of one dimension or more raises CUDA's own
  error ("Expected all tensors to be on the same device"), as CUDA does; CPU 0-dim tensors are
  allowed (CUDA takes them as scalars), and so is indexing a device tensor with CPU indices,
  but not a CPU tensor with device indices; ``.numpy()`` of a tagged tensor raises;
- ``torch.autocast("cuda", dtype)`` casts as CUDA's autocast does, for the ops on the pretend
  device: matrix products and convolutions see their inputs rounded to ``dtype`` and hand back
  ``dtype`` outputs (the arithmetic is float32, as cuDNN accumulates), the ops CUDA runs in
  float32 (losses, softmax, sums, norms, ...) get float32 inputs, and torchvision's RoI ops
  run in float32 and answer in their input's dtype; so activations are bf16 where they would
  be on a GPU. ``torch.autocast("cpu")`` changes nothing: the pretend device's ops are not CPU
  ops. CPU autocast itself is not used: oneDNN's bf16 conv3d weight gradient wrote NaN now and
  then on the 2-core AVX-512 build machine (in 4 of 8 and 2 of 20 backward passes in two
  trials, with one thread as with two), and with oneDNN off it is 30 times slower;
- ``pin_memory()`` returns a copy that ``is_pinned()``; copies to the device are recorded with
  their size, whether the source was pinned and whether they were ``non_blocking``;
- nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``) is stood in for by the CPU decoder,
  behind torchvision's own input checks;
- CUDA streams are modelled: what each one has queued since the host last waited for it, which
  stream waited for which, and which tensors were recorded on which stream.

Everything the host waits for is recorded (:attr:`PretendCuda.record`): a ``.item()``,
``float()``, ``bool()`` or ``.tolist()`` of a device tensor, a blocking copy in either direction,
a copy to the device from pageable memory, ops whose output size depends on the data
(``nonzero``, boolean masks), ``torch.cuda.synchronize``. So does every hazard of streams: a
tensor made on one stream used on another before that stream waited for it, or without
``record_stream`` (the caching allocator could then hand its memory to the next allocation on
the first stream while the second still reads it), and an nvJPEG decode whose stream has
kernels queued (torchvision's decoder allocates its outputs on the caller's stream and writes
them from its own stream without waiting for the caller's: pytorch/vision#9606).

What it cannot see: anything that happens only in CUDA kernels (numerics of cuDNN and nvJPEG,
memory, speed, ``torch.compile``'s CUDA code); ``benchmarks/gpu_suite.sh`` checks those on a GPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
MIXED = (
    "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"
)
NUMPY = (
    "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
    "host memory first."
)
CPU_INDEXED = "indices should be either on cpu or on the same device as the indexed tensor (cpu)"

# Process-wide, so that tensors kept from one use of the harness to the next (a cached model, a
# constant table uploaded once per device) stay on the pretend device; weak, so they cost
# nothing once freed.
_ON_DEVICE: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> True
_PINNED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # storage -> True (pin threads write it)
_MADE_ON: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> (side stream, its work count)
_RECORDED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> ids of its recorded streams
_PIN_LOCK = threading.Lock()


def on_device(tensor: Tensor) -> bool:
    """Whether ``tensor`` lives on the pretend CUDA device."""
    return tensor in _ON_DEVICE


def _tag(tensor: Tensor) -> None:
    _ON_DEVICE[tensor] = True


def _is_pinned(tensor: Tensor) -> bool:
    """Whether ``tensor``'s memory is pinned (its storage: views of pinned memory are pinned)."""
    with torch._C.DisableTorchFunction(), _PIN_LOCK:
        return tensor.untyped_storage() in _PINNED


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass(frozen=True)
class Copy:
    """One copy between the host and the device."""

    direction: str  # "h2d" or "d2h"
    op: str  # what asked for it
    nbytes: int
    pinned: bool  # the host side is pinned memory
    non_blocking: bool


@dataclass
class Record:
    """What the host and the device did under the harness, in order."""

    syncs: list[str] = field(default_factory=list)  # each time the host waited for the device
    copies: list[Copy] = field(default_factory=list)
    decodes: list[int] = field(default_factory=list)  # images per nvJPEG call
    hazards: list[str] = field(default_factory=list)  # stream-ordering mistakes
    device_ops: Counter[str] = field(default_factory=Counter)  # ops run on the device, by name
    autocast: list[torch.dtype] = field(default_factory=list)  # dtypes of the cuda autocasts

    def h2d(self) -> list[Copy]:
        """The copies from the host to the device."""
        return [c for c in self.copies if c.direction == "h2d"]


class PretendStream(torch.Stream):
    """A CUDA stream of the pretend device: its queued work and the streams it waited for.

    It is a :class:`torch.Stream` (of the CPU) so that ``Tensor.record_stream`` accepts it.
    """

    def __new__(cls, harness: PretendCuda, name: str) -> PretendStream:
        return super().__new__(cls, device=CPU)

    def __init__(self, harness: PretendCuda, name: str) -> None:
        self.harness, self.name = harness, name
        self.work = 0  # ops queued on this stream so far
        self.pending = False  # work queued since the host last waited for this stream
        self.waited: dict[int, int] = {}  # id(stream) -> its work count when this one waited

    def wait_stream(self, stream: torch.Stream) -> None:
        """Order this stream's later work after everything queued on ``stream`` so far."""
        assert isinstance(stream, PretendStream), "not a stream of the pretend device"
        self.waited[id(stream)] = stream.work

    def synchronize(self) -> None:
        """Make the host wait for this stream."""
        self.harness.sync(f"{self.name} stream synchronize", self)

    def query(self) -> bool:
        """Whether the stream's work is done (always, on the CPU)."""
        return True

    def __repr__(self) -> str:
        return f"PretendStream({self.name})"


def _tensors(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Tensor]:
    """The tensors among the arguments, one level into lists and tuples (``cat``, ``_foreach``)."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(v for v in value if isinstance(v, Tensor))
    return found


def _outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [v for v in out if isinstance(v, Tensor)]
    return []


def _name(func: Callable[..., Any]) -> str:
    return str(getattr(func, "__name__", func))


def _device_of(value: Any) -> torch.device:
    """A ``device=`` argument as a device (an int is a CUDA index, as in torch)."""
    return torch.device("cuda", value) if isinstance(value, int) else torch.device(value)


def _check_index(device: torch.device) -> None:
    if device.type == "cuda" and (device.index or 0) != 0:
        raise RuntimeError("CUDA error: invalid device ordinal (the pretend machine has one GPU)")


# Ops whose Python result, or whose output size, needs the device's data on the host.
_SYNCING = {
    Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__float__, Tensor.__int__,
    Tensor.__index__, Tensor.__complex__, Tensor.__format__, Tensor.__repr__, Tensor.__contains__,
    torch.equal, Tensor.equal, torch.allclose, Tensor.allclose, torch.nonzero, Tensor.nonzero,
    torch.argwhere, Tensor.argwhere, torch.masked_select, Tensor.masked_select, torch.unique,
    Tensor.unique, torch.unique_consecutive, Tensor.unique_consecutive, torch.is_nonzero,
    Tensor.is_nonzero,
}  # fmt: skip
# CUDA autocast's op lists (torch.amp docs, "CUDA Ops that can autocast to float16 / float32").
_LOWER_PRECISION = {
    "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "__matmul__",
    "__rmatmul__", "einsum", "mm", "mv", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul",
    "linalg_multi_dot", "linalg_vecdot",
}  # fmt: skip
_FLOAT32 = {
    "__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin", "cosh", "erfinv", "exp",
    "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh", "tan", "pow",
    "softplus", "layer_norm", "group_norm", "norm", "nuclear_norm", "cosine_similarity",
    "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss", "kl_div",
    "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
    "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
    "softmax", "log_softmax", "softmin", "cross_entropy", "cumprod", "cumsum", "prod", "sum",
    "normalize",
}  # fmt: skip
# torchvision's ops with an autocast rule: float32 inputs, the output in the input's dtype.
_TORCHVISION_FLOAT32 = {"roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "deform_conv2d"}
# Functions that compare tensors' metadata only, whatever their devices.
_METADATA = {torch._has_compatible_shallow_copy_type, torch.is_same_size}
_HOST_DATA = {torch.tensor, torch.as_tensor, torch.asarray, Tensor.new_tensor}  # copy host data


class PretendCuda(TorchFunctionMode):
    """The harness: enter it (``with PretendCuda() as cuda:``) and the process has a CUDA GPU.

    Attributes
    ----------
    record : Record
        Syncs, copies, decodes, stream hazards and device ops since the harness was entered
        (or since :meth:`reset`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.record = Record()
        self.default_stream = PretendStream(self, "default")
        self.stream = self.default_stream
        self._casts: list[torch.dtype | None] = []  # the autocast dtypes in force (None: off)
        self._patches = contextlib.ExitStack()
        self._handlers: dict[Any, Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]] = {
            Tensor.device.__get__: self._device,
            Tensor.is_cuda.__get__: lambda f, a, k: on_device(a[0]),  # type: ignore[attr-defined]
            Tensor.is_cpu.__get__: lambda f, a, k: not on_device(a[0]),  # type: ignore[attr-defined]
            Tensor.get_device: lambda f, a, k: 0 if on_device(a[0]) else -1,
            Tensor.numpy: self._numpy,
            Tensor.__array__: self._numpy,
            Tensor.to: self._to,
            Tensor.cuda: self._to,
            Tensor.cpu: self._to,
            Tensor.type_as: self._to,
            Tensor.copy_: self._copy,
            Tensor.data.__set__: self._set_data,  # type: ignore[attr-defined]
            Tensor.__getitem__: self._getitem,
            Tensor.__setitem__: self._setitem,
            Tensor.record_stream: self._record_stream,
            Tensor.expand_as: self._like_self,
            Tensor.view_as: self._like_self,
            Tensor.reshape_as: self._like_self,
        }

    # -- entering and leaving --------------------------------------------------------------

    def __enter__(self) -> PretendCuda:
        patch = self._patch
        cuda = torch.cuda
        for name, value in {
            "is_available": lambda: True,
            "device_count": lambda: 1,
            "current_device": lambda: 0,
            "set_device": lambda device: _check_index(_device_of(device)),
            "get_device_name": lambda device=None: "pretend CUDA device (CPU tensors)",
            "get_device_capability": lambda device=None: (9, 0),
            "get_device_properties": lambda device=None: SimpleNamespace(
                name="pretend CUDA device", total_memory=80 * 2**30, major=9, minor=0,
                multi_processor_count=132,
            ),
            "is_bf16_supported": lambda including_emulation=True: True,
            "is_current_stream_capturing": lambda: False,
            "synchronize": lambda device=None: self.sync("torch.cuda.synchronize"),
            "max_memory_allocated": lambda device=None: 0,
            "memory_allocated": lambda device=None: 0,
            "reset_peak_memory_stats": lambda device=None: None,
            "empty_cache": lambda: None,
            "Stream": lambda device=None, priority=0: PretendStream(self, "side"),
            "current_stream": lambda device=None: self.stream,
            "default_stream": lambda device=None: self.default_stream,
            "stream": self._use_stream,
            # the device's random state (dynamo saves and restores it around a compilation)
            "get_rng_state": lambda device="cuda": torch.zeros(16, dtype=torch.uint8),
            "set_rng_state": lambda new_state, device="cuda": None,
            "get_rng_state_all": lambda: [torch.zeros(16, dtype=torch.uint8)],
            "set_rng_state_all": lambda new_states: None,
            "manual_seed": lambda seed: None,
            "manual_seed_all": lambda seed: None,
        }.items():  # fmt: skip
            patch(cuda, name, value)
        for name, value in {
            "is_available": lambda: True,
            "current_accelerator": lambda check_available=False: torch.device("cuda"),
            "current_device_index": lambda: 0,
            "set_device_index": lambda device: _check_index(_device_of(device)),
            "device_count": lambda: 1,
            "synchronize": lambda device=None: self.sync("torch.accelerator.synchronize"),
            "current_stream": lambda device=None: self.stream,
        }.items():
            patch(torch.accelerator, name, value)
        patch(torch, "autocast", self._autocast)
        patch(torch.amp, "autocast", self._autocast)
        patch(Tensor, "pin_memory", _pin_memory)
        patch(Tensor, "is_pinned", _is_pinned_method)
        patch(torch._C, "_group_tensors_by_device_and_dtype", self._grouped())
        patch(torch.ops.image, "decode_jpegs_cuda", self._decode_jpegs)
        # One torch thread, as a CPU client has: the pretend device's tensors are tiny, and two
        # threads on two busy cores made a client round 15-20 times slower (9-11 s, 0.5-0.6 s)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self._patches.callback(torch.set_num_threads, threads)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._patches.close()

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        had = name in vars(owner)
        old = vars(owner).get(name)
        setattr(owner, name, value)

        def restore() -> None:
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)

        self._patches.callback(restore)

    # -- the record ----------------------------------------------------------------------

    def reset(self) -> Record:
        """Start a new record; returns the old one."""
        old, self.record = self.record, Record()
        return old

    def sync(self, what: str, stream: PretendStream | None = None) -> None:
        """Record that the host waited for the device (for ``stream``, or for all of them)."""
        self.record.syncs.append(what)
        if stream is not None:
            stream.pending = False
        else:
            self.default_stream.pending = self.stream.pending = False

    def _queue(self) -> None:
        self.stream.work += 1
        self.stream.pending = True

    # -- the mode ------------------------------------------------------------------------

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        handler = self._handlers.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        if "device" in kwargs and func is not torch.device:
            return self._factory(func, args, kwargs)
        inputs = _tensors(args, kwargs)
        on = [t for t in inputs if on_device(t)]
        if not on or func in _METADATA:
            return func(*args, **kwargs)
        off = next((t for t in inputs if not on_device(t) and t.dim() > 0), None)
        if off is not None:
            raise RuntimeError(f"{MIXED} ({_name(func)}: a CPU tensor of shape {tuple(off.shape)})")
        self._check_streams(on, _name(func))
        cast = self._casts[-1] if self._casts else None
        if cast is not None and _name(func) in _LOWER_PRECISION:
            args, kwargs = _floats_to((args, kwargs), cast, torch.float32)
            out = _floats_to(func(*args, **kwargs), cast)
        elif cast is not None and _name(func) in _FLOAT32:
            args, kwargs = _floats_to((args, kwargs), torch.float32)
            out = func(*args, **kwargs)
        elif cast is not None and _name(func) in _TORCHVISION_FLOAT32:  # back to the input's
            dtype = on[0].dtype
            args, kwargs = _floats_to((args, kwargs), torch.float32)
            out = _floats_to(func(*args, **kwargs), dtype)
        else:
            out = func(*args, **kwargs)
        made = self._tag_outputs(out, inputs)
        if made:
            self.record.device_ops[_name(func)] += 1
            self._queue()
        if func in _SYNCING:
            self.sync(_name(func), self.stream)
        elif func in _HOST_DATA:
            self._upload(_name(func), 0, pinned=False, non_blocking=False)
        return out

    def _tag_outputs(self, out: Any, inputs: list[Tensor]) -> list[Tensor]:
        """Tag the outputs of a device op (not a CPU input handed back unchanged)."""
        made = [t for t in _outputs(out) if not any(t is i for i in inputs) or on_device(t)]
        for tensor in made:
            _tag(tensor)
            if self.stream is not self.default_stream:
                _MADE_ON[tensor] = (self.stream, self.stream.work + 1)
        return made

    def _check_streams(self, tensors: list[Tensor], op: str) -> None:
        """Record a hazard when a tensor made on another stream is used on this one unsafely."""
        for tensor in tensors:
            made = _MADE_ON.get(tensor)
            if made is None or made[0] is self.stream:
                continue
            stream, work = made
            if self.stream.waited.get(id(stream), -1) < work:
                self.record.hazards.append(
                    f"{op} on the {self.stream.name} stream reads a tensor made on the "
                    f"{stream.name} stream before waiting for it (wait_stream)"
                )
            if id(self.stream) not in _RECORDED.get(tensor, ()):
                self.record.hazards.append(
                    f"{op} on the {self.stream.name} stream uses a tensor of the {stream.name} "
                    "stream that was not recorded on it (record_stream): its memory can be "
                    "handed out again while this stream still reads it"
                )
                _RECORDED.setdefault(tensor, set()).add(id(self.stream))  # say it once

    def _upload(self, op: str, nbytes: int, pinned: bool, non_blocking: bool) -> None:
        self.record.copies.append(Copy("h2d", op, nbytes, pinned, non_blocking))
        self._queue()
        if not non_blocking:
            self.sync(f"{op}: a blocking host-to-device copy", self.stream)
        elif not pinned:
            self.sync(f"{op}: a copy from pageable memory (synchronous for the host)", self.stream)

    def _download(self, op: str, nbytes: int, non_blocking: bool) -> None:
        self.record.copies.append(Copy("d2h", op, nbytes, True, non_blocking))
        if not non_blocking:
            self.sync(f"{op}: a device-to-host copy", self.stream)

    # -- handlers ------------------------------------------------------------------------

    def _device(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return CUDA if on_device(args[0]) else func(*args, **kwargs)

    def _numpy(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if on_device(args[0]):
            raise TypeError(NUMPY)
        return func(*args, **kwargs)

    def _like_self(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        out = func(*args, **kwargs)
        if on_device(args[0]):
            _tag(out)
        return out

    def _factory(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A tensor made with ``device=``: on the pretend GPU when it says cuda."""
        device = kwargs["device"]
        if device is None:
            return self.__torch_function__(func, (), args, _without(kwargs, "device"))
        device = _device_of(device)
        _check_index(device)
        data = args[0] if args and isinstance(args[0], Tensor) and func in _HOST_DATA else None
        if device.type != "cuda":
            if data is not None and on_device(data):  # torch.as_tensor(cuda_tensor, device=cpu)
                return self._to(Tensor.to, (data, CPU), {})
            return func(*args, **kwargs)
        if data is not None and on_device(data):
            return self._to(Tensor.to, (data,), {"dtype": kwargs.get("dtype")})
        out = func(*args, **(kwargs | {"device": CPU}))
        for tensor in _outputs(out):
            _tag(tensor)
        self.record.device_ops[_name(func)] += 1
        self._queue()
        if func in _HOST_DATA:
            self._upload(_name(func), sum(_nbytes(t) for t in _outputs(out)), False, False)
        return out

    def _to(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``.to``, ``.cuda``, ``.cpu``, ``.type_as``: a copy when the tensor changes device."""
        src, rest = args[0], args[1:]
        kwargs = dict(kwargs)
        copy, other = bool(kwargs.pop("copy", False)), None
        memory_format = kwargs.get("memory_format")
        if func is Tensor.cpu:
            device, dtype, non_blocking = CPU, None, False
        elif func is Tensor.cuda:
            device = _device_of(rest[0] if rest else kwargs.get("device") or 0)
            dtype = None
            non_blocking = bool(rest[1] if len(rest) > 1 else kwargs.get("non_blocking", False))
        elif func is Tensor.type_as:
            other = rest[0]
            device, dtype, non_blocking, memory_format = None, other.dtype, False, None
        else:
            device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
            other = next((a for a in (*rest, kwargs.get("other")) if isinstance(a, Tensor)), None)
        if func in (Tensor.type_as, Tensor.to) and other is not None:
            device = CUDA if on_device(other) else CPU
        src_on = on_device(src)
        dst_on = src_on if device is None else device.type == "cuda"
        if device is not None:
            _check_index(device)
        moving = src_on != dst_on
        out = src.to(
            device=CPU, dtype=dtype, non_blocking=non_blocking, copy=copy or moving,
            memory_format=memory_format or torch.preserve_format,
        )  # fmt: skip
        if dst_on:
            _tag(out)
        if moving and dst_on:
            self._upload(_name(func), _nbytes(src), _is_pinned(src), non_blocking)
        elif moving:
            self._download(_name(func), _nbytes(src), non_blocking)
        elif dst_on and out is not src:
            self._queue()
        return out

    def _copy(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        dst, src = args[0], args[1]
        non_blocking = bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        out = func(*args, **kwargs)
        dst_on, src_on = on_device(dst), on_device(src)
        if dst_on and not src_on:
            self._upload("copy_", _nbytes(src), _is_pinned(src), non_blocking)
        elif src_on and not dst_on:
            self._download("copy_", _nbytes(src), non_blocking)
        elif dst_on:
            self._queue()
        return out

    def _set_data(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        target, value = args
        func(*args, **kwargs)
        if on_device(value):
            _tag(target)
        else:
            _ON_DEVICE.pop(target, None)

    def _getitem(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        base, index = args
        indices = _tensors(index if isinstance(index, tuple) else (index,), {})
        if not on_device(base):
            if any(on_device(i) for i in indices):
                raise IndexError(CPU_INDEXED)
            return func(*args, **kwargs)
        self._check_streams([base, *(i for i in indices if on_device(i))], "__getitem__")
        out = func(*args, **kwargs)
        _tag(out)
        self._queue()
        for i in indices:
            if not on_device(i) and i.dim() > 0:  # CUDA copies CPU indices over first
                self._upload("__getitem__ (CPU indices)", _nbytes(i), _is_pinned(i), False)
            elif on_device(i) and i.dtype == torch.bool:  # the output's size is the mask's count
                self.sync("__getitem__ (a boolean mask)", self.stream)
        return out

    def _setitem(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        base, index, value = args
        indices = _tensors(index if isinstance(index, tuple) else (index,), {})
        if not on_device(base):
            if any(on_device(i) for i in indices):
                raise IndexError(CPU_INDEXED)
            if isinstance(value, Tensor) and on_device(value):
                self._download("__setitem__", _nbytes(value), False)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self._queue()
        if isinstance(value, Tensor) and not on_device(value) and value.dim() > 0:
            self._upload("__setitem__", _nbytes(value), _is_pinned(value), False)
        return out

    def _record_stream(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensor, stream = args
        if not on_device(tensor):
            raise RuntimeError("record_stream: the tensor is not a CUDA tensor")
        _RECORDED.setdefault(tensor, set()).add(id(stream))

    # -- patched functions ---------------------------------------------------------------

    @contextlib.contextmanager
    def _use_stream(self, stream: PretendStream | None) -> Iterator[None]:
        """``torch.cuda.stream(s)``: make ``s`` the current stream inside the block."""
        before = self.stream
        self.stream = stream or before
        try:
            yield
        finally:
            self.stream = before

    def _autocast(
        self, device_type: str, dtype: torch.dtype | None = None, enabled: bool = True,
        cache_enabled: bool | None = None,
    ) -> contextlib.AbstractContextManager[Any]:  # fmt: skip
        """``torch.autocast``: CUDA's casting rules for the pretend device's ops (a context)."""
        if device_type != "cuda":
            return contextlib.nullcontext()  # the pretend device's ops are not CPU ops
        return self._casting((dtype or torch.float16) if enabled else None)  # CUDA's default

    @contextlib.contextmanager
    def _casting(self, dtype: torch.dtype | None) -> Iterator[None]:
        self._casts.append(dtype)
        if dtype is not None:
            self.record.autocast.append(dtype)
        try:
            yield
        finally:
            self._casts.pop()

    def _grouped(self) -> Callable[..., Any]:
        """Foreach grouping keyed by the devices the tensors report (CUDA for tagged ones)."""
        real = torch._C._group_tensors_by_device_and_dtype

        def group(tensorlistlist: list[list[Tensor | None]], with_indices: bool = False) -> Any:
            grouped = real(tensorlistlist, with_indices)
            out = {}
            for (device, dtype), value in grouped.items():
                first = next(t for t in value[0][0] if t is not None)
                out[(CUDA if on_device(first) else device, dtype)] = value
            return out

        return group

    def _decode_jpegs(self, images: list[Tensor], mode: int, device: torch.device) -> list[Tensor]:
        """nvJPEG's stand-in: torchvision's checks, the CPU decoder, outputs on the device."""
        if torch.device(device).type != "cuda":
            raise RuntimeError("Expected the device parameter to be a cuda device")
        for data in images:
            if data.dtype != torch.uint8:
                raise RuntimeError("Expected a torch.uint8 tensor")
            if on_device(data):
                raise RuntimeError("The input tensor must be on CPU when decoding with nvjpeg")
            if data.dim() != 1 or data.numel() == 0:
                raise RuntimeError("Expected a non empty 1-dimensional tensor")
        if self.stream.pending:
            self.record.hazards.append(
                f"nvJPEG decodes on the {self.stream.name} stream while it has kernels queued: "
                "its outputs can reuse memory those kernels still read (pytorch/vision#9606)"
            )
        with torch._C.DisableTorchFunction():
            decoded = [torch.ops.image.decode_jpeg(data, mode, False) for data in images]
        self.record.decodes.append(len(images))
        for image in decoded:  # allocated on the caller's stream; the decoder's stream writes
            _tag(image)
            if self.stream is not self.default_stream:
                _MADE_ON[image] = (self.stream, self.stream.work + 1)
        self.stream.work += 1  # the caller's stream waits for the decoder (no kernel of its own)
        return decoded


def _floats_to(value: Any, *dtypes: torch.dtype) -> Any:
    """Cast the floating-point tensors in ``value`` (args, kwargs, outputs) through ``dtypes``."""
    if isinstance(value, Tensor):
        if value.is_floating_point():
            for dtype in dtypes:
                value = value.to(dtype)
        return value
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(_floats_to(v, *dtypes) for v in value)
    if isinstance(value, dict):
        return {k: _floats_to(v, *dtypes) for k, v in value.items()}
    return value


def _without(kwargs: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != key}


def _pin_memory(self: Tensor, device: Any = None) -> Tensor:
    """``Tensor.pin_memory``: a copy in "pinned" memory (any thread: the loader pins in its own)."""
    if on_device(self):
        raise RuntimeError(
            "cannot pin 'torch.cuda.FloatTensor': only dense CPU tensors can be pinned"
        )
    with torch._C.DisableTorchFunction():
        pinned = self.clone(memory_format=torch.preserve_format)
    with torch._C.DisableTorchFunction(), _PIN_LOCK:
        _PINNED[pinned.untyped_storage()] = True
    return pinned


def _is_pinned_method(self: Tensor, device: Any = None) -> bool:
    return _is_pinned(self)
