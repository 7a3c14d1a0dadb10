"""The FedVSSL aggregation math, as pure numpy functions (no Flower needed).

The math is the paper's (as the authors' research code computes it), not the Flower baseline's,
which concatenates the two averages instead of adding them and swaps the meaning of alpha:

* A = FedAvg, clients weighted by their number of training examples n_k;
* B = loss-based average, clients weighted by softmax(-L_k) of their mean local CtP loss;
* mix = alpha * B + (1 - alpha) * A, element-wise over every array (alpha=0 is FedAvg);
* global = (mix + beta * previous) / (1 + beta) once a previous global model exists (beta=1 is
  the paper's 0.5/0.5 "SWA" blend; round 1 has no previous model, so global = mix).

Every step is linear, so it folds into one weight per client (and one for the previous model),
and each array is accumulated in cache-sized blocks without stacking the clients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeGuard

import numpy as np

_BLOCK = 1 << 16  # elements accumulated at a time: 256 KiB of float32 stays in cache


def is_number(value: object) -> TypeGuard[float]:
    """Tell whether ``value`` is a real number (bools excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_alpha(alpha: float, name: str = "alpha", error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` naming ``name`` unless alpha is in [0, 1]."""
    if not (is_number(alpha) and 0 <= alpha <= 1):
        raise error(
            f"{name} must be in [0, 1], got {alpha!r} "
            "(alpha=0 is FedAvg, alpha=1 is loss-based averaging)"
        )


def check_beta(beta: float, name: str = "beta", error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` naming ``name`` unless beta is a finite number >= 0."""
    if not (is_number(beta) and math.isfinite(beta) and beta >= 0):
        raise error(
            f"{name} must be a finite number >= 0, got {beta!r} "
            "(beta=0 turns the blend with the previous global model off, beta=1 is the paper's SWA)"
        )


def _as_vector(values: Sequence[float], what: str) -> np.ndarray:
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a list of numbers, got {values!r}") from err
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"{what} must be a non-empty list with one number per client")
    return vector


def fedavg_weights(num_examples: Sequence[int]) -> np.ndarray:
    """Return the FedAvg client weights n_k / sum(n).

    Parameters
    ----------
    num_examples : Sequence[int]
        Number of training examples of each client (>= 0, at least one > 0).

    Returns
    -------
    np.ndarray
        float64 weights, one per client, summing to 1.
    """
    n = _as_vector(num_examples, "num_examples")
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"num_examples must be >= 0 for every client, got {list(num_examples)}")
    total = n.sum()
    if total <= 0:
        raise ValueError("num_examples sum to 0: at least one client must report training examples")
    return n / total


def loss_weights(losses: Sequence[float]) -> np.ndarray:
    """Return the loss-based client weights softmax(-L_k).

    Parameters
    ----------
    losses : Sequence[float]
        Each client's mean training loss over its local epoch (not exponentiated).

    Returns
    -------
    np.ndarray
        float64 weights, one per client, summing to 1; a lower loss gives a larger weight.
    """
    loss = _as_vector(losses, "losses")
    if not np.all(np.isfinite(loss)):
        raise ValueError(
            f"client losses must be finite, got {list(losses)}: a NaN or infinite loss means "
            "that client's training diverged"
        )
    # Shifting by the minimum keeps every exponent <= 0, so nothing overflows.
    scores = np.exp(-(loss - loss.min()))
    return scores / scores.sum()


def mixing_weights(
    num_examples: Sequence[int], losses: Sequence[float], alpha: float
) -> np.ndarray:
    """Return the per-client weights of mix = alpha * B + (1 - alpha) * A.

    Parameters
    ----------
    num_examples : Sequence[int]
        Number of training examples of each client (weights of A).
    losses : Sequence[float]
        Mean training loss of each client (softmax(-loss) are the weights of B).
    alpha : float
        Share of the loss-based average B, in [0, 1].

    Returns
    -------
    np.ndarray
        float64 weights, one per client, summing to 1.
    """
    check_alpha(alpha)
    if len(num_examples) != len(losses):
        raise ValueError(
            f"got {len(num_examples)} example counts but {len(losses)} losses: "
            "every client needs one of each"
        )
    return alpha * loss_weights(losses) + (1.0 - alpha) * fedavg_weights(num_examples)


def _check_layout(client_arrays: list[list[np.ndarray]], previous: list[np.ndarray] | None) -> None:
    if not client_arrays:
        raise ValueError("no client arrays to aggregate")
    reference = client_arrays[0]
    models = [(f"client {k + 1}", arrays) for k, arrays in enumerate(client_arrays)]
    if previous is not None:
        models.append(("previous global model", previous))
    for owner, arrays in models[1:]:
        if len(arrays) != len(reference):
            raise ValueError(
                f"{owner} has {len(arrays)} arrays but client 1 has {len(reference)}: "
                "every model must list the same state-dict entries"
            )
        for i, (array, ref) in enumerate(zip(arrays, reference, strict=True)):
            if array.shape != ref.shape or array.dtype != ref.dtype:
                raise ValueError(
                    f"array {i} of {owner} is {array.dtype}{list(array.shape)} but client 1 has "
                    f"{ref.dtype}{list(ref.shape)}: the models do not have the same layout"
                )
    for i, ref in enumerate(reference):
        if not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(ref.dtype, np.integer)):
            raise ValueError(f"array {i} has dtype {ref.dtype}; only float and int arrays average")


def _weighted_sum(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Return sum_k weights[k] * arrays[k], keeping the arrays' dtype (ints are rounded)."""
    first = arrays[0]
    if np.issubdtype(first.dtype, np.integer):
        # BN `num_batches_tracked` and friends: tiny, so a float64 mean then rounding is cheap.
        mean = sum(w * a.astype(np.float64) for a, w in zip(arrays, weights, strict=True))
        return np.asarray(np.rint(mean)).astype(first.dtype)
    scalar = first.dtype.type
    scaled = [scalar(w) for w in weights]
    flats = [np.ascontiguousarray(a).reshape(-1) for a in arrays]  # views for contiguous input
    out = np.empty(first.shape, dtype=first.dtype)
    flat_out = out.reshape(-1)
    scratch = np.empty(min(_BLOCK, flat_out.size), dtype=first.dtype)
    for start in range(0, flat_out.size, _BLOCK):
        stop = min(start + _BLOCK, flat_out.size)
        acc, tmp = flat_out[start:stop], scratch[: stop - start]
        np.multiply(flats[0][start:stop], scaled[0], out=acc)
        for flat, w in zip(flats[1:], scaled[1:], strict=True):
            np.multiply(flat[start:stop], w, out=tmp)
            acc += tmp
    return out


def aggregate_fedvssl(
    client_arrays: list[list[np.ndarray]],
    num_examples: list[int],
    losses: list[float],
    alpha: float,
    beta: float,
    previous: list[np.ndarray] | None,
) -> list[np.ndarray]:
    """Aggregate client models into the new FedVSSL global model.

    Parameters
    ----------
    client_arrays : list[list[np.ndarray]]
        One list of arrays per client, all in the same state-dict order and shapes.
    num_examples : list[int]
        Number of training examples of each client.
    losses : list[float]
        Mean training loss of each client.
    alpha : float
        Share of the loss-based average in the mix, in [0, 1] (0 is FedAvg).
    beta : float
        Weight of the previous global model, >= 0 (0 turns the blend off).
    previous : list[np.ndarray] | None
        The last global model, or None in round 1.

    Returns
    -------
    list[np.ndarray]
        The global model: (mix + beta * previous) / (1 + beta), or mix when previous is None.
        Float arrays keep their dtype; integer arrays get the rounded weighted mean.
    """
    check_beta(beta)
    if len(client_arrays) != len(num_examples):
        raise ValueError(
            f"got {len(client_arrays)} client models but {len(num_examples)} example counts"
        )
    weights = mixing_weights(num_examples, losses, alpha)
    _check_layout(client_arrays, previous)
    models = list(client_arrays)
    if previous is not None and beta > 0:
        weights = np.append(weights, beta) / (1.0 + beta)
        models.append(previous)
    weight_list = [float(w) for w in weights]
    return [
        _weighted_sum([model[i] for model in models], weight_list)
        for i in range(len(client_arrays[0]))
    ]
