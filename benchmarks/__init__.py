"""Performance benchmarks, run as ``python -m benchmarks.<name>`` from the repository root.

This module owns what the data-pipeline, training-step and client-epoch benchmarks share: the
description of the machine a report's numbers come from, the device synchronisation around a
timed region, and the atomic JSON output. None of it needs PyAV or Flower, so those benchmarks
run on a machine that has only PyTorch, torchvision, OpenCV and numpy.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch


def cpu_name() -> str:
    """Return the CPU model name (``/proc/cpuinfo`` on Linux, else ``platform.processor``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Describe the machine, the libraries and (for CUDA) the GPU that the numbers come from.

    Parameters
    ----------
    device
        The device the benchmark runs on; CUDA adds the GPU name, memory and math settings.

    Returns
    -------
    dict
        JSON-ready description.
    """
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    return info


def pick_device(name: str | None) -> torch.device:
    """Return the device called ``name``, or CUDA when there is one and the CPU otherwise."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name}: not a device name; use cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count()
    if device.type == "cuda" and (device.index or 0) >= count:
        raise SystemExit(
            f"--device {name}: this machine has {count} CUDA device(s); use --device cpu"
        )
    return device


def grad_norm(module: torch.nn.Module) -> float:
    """Return the L2 norm of ``module``'s gradients (0 without any), as clipping would see it."""
    grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer reads the work's true end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_report(report: Any, output: Path | None) -> None:
    """Write a JSON value, indented, to ``output`` atomically, or to stdout when None.

    Parameters
    ----------
    report
        JSON-ready results (a dict, a list, ...).
    output
        Destination file; its folder is created. A reader never sees a half-written file: the
        text goes to a temporary file in the same folder, which is then renamed.
    """
    text = json.dumps(report, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
