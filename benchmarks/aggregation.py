"""Time the FedVSSL aggregation (``aggregate_fedvssl``) on full-size CtP models.

Each fake client holds the 126 state-dict arrays of the R3D-18 CtP pre-training model (float32
weights and BN statistics, 20 int64 ``num_batches_tracked`` buffers), random but with the real
shapes. The timed call is the default FedVSSL rule (alpha 0.9, beta 1 with a previous global
model), the most work per round. Large client counts reuse a pool of distinct models (each far
larger than any CPU cache, so memory traffic is the same as with all-distinct models).

    python -m benchmarks.aggregation [--clients 10 100] [--repeats 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import machine_info, write_report
from CtP.ctp import build_ctp
from fedvssl.aggregation import aggregate_fedvssl

ALPHA, BETA = 0.9, 1.0


def ctp_state_spec() -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """Return the full CtP model's (name, shape, dtype) entries in state-dict order."""
    with torch.device("meta"):  # shapes only: no memory is allocated
        model = build_ctp()
    spec = []
    for name, tensor in model.state_dict().items():
        dtype = np.dtype(str(tensor.dtype).removeprefix("torch."))
        spec.append((name, tuple(tensor.shape), dtype))
    return spec


def fake_model(spec: list[tuple[str, tuple[int, ...], np.dtype]], seed: int) -> list[np.ndarray]:
    """Return one client's arrays with the given layout, filled with random numbers."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _, shape, dtype in spec:
        if np.issubdtype(dtype, np.integer):
            arrays.append(np.asarray(rng.integers(0, 10_000), dtype=dtype).reshape(shape))
        else:
            arrays.append(rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False))
    return arrays


def time_aggregation(
    pool: list[list[np.ndarray]], previous: list[np.ndarray], clients: int, repeats: int
) -> dict[str, Any]:
    """Time ``aggregate_fedvssl`` over ``clients`` models drawn in turn from ``pool``."""
    models = [pool[k % len(pool)] for k in range(clients)]
    rng = np.random.default_rng(clients)
    examples = [int(n) for n in rng.integers(50, 500, size=clients)]
    losses = [float(x) for x in rng.uniform(1.0, 3.0, size=clients)]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        aggregate_fedvssl(models, examples, losses, ALPHA, BETA, previous)
        seconds.append(time.perf_counter() - start)
    return {
        "clients": clients,
        "distinct_models": min(clients, len(pool)),
        "seconds_min": min(seconds),
        "seconds_median": statistics.median(seconds),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10], help="client counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per client count")
    parser.add_argument("--distinct", type=int, default=10, help="distinct fake models at most")
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.repeats < 1 or args.distinct < 1:
        parser.error("--clients, --repeats and --distinct must be >= 1")

    spec = ctp_state_spec()
    pool = [fake_model(spec, seed) for seed in range(min(args.distinct, max(args.clients)))]
    previous = fake_model(spec, seed=len(pool))
    floats = sum(int(np.prod(s)) for _, s, d in spec if np.issubdtype(d, np.floating))
    report = {
        "benchmark": "aggregate_fedvssl",
        "machine": machine_info(),
        "model": {
            "arrays": len(spec),
            "float_elements": floats,
            "int_buffers": sum(1 for _, _, d in spec if np.issubdtype(d, np.integer)),
            "megabytes": sum(int(np.prod(s)) * d.itemsize for _, s, d in spec) / 2**20,
        },
        "alpha": ALPHA,
        "beta": BETA,
        "with_previous": True,
        "repeats": args.repeats,
        "results": [time_aggregation(pool, previous, n, args.repeats) for n in args.clients],
    }
    write_report(report, args.output)


if __name__ == "__main__":
    main()
