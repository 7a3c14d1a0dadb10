"""What a run is: the settings that decide its results, kept in its folder and checked on resume.

A run writes ``fingerprint.json`` into its folder when it starts: every value of its config that
decides the results, by dotted key (``strategy.alpha``, ``optimizer.lr``, ``pretext.name``, ...),
and for a fine-tuning the SHA-256 of the pre-trained file. The keys that only say how long, how
fast, where or how verbosely a run goes (``rounds``, ``workers``, ``data_dir``, ``bf16``, ...) are
left out, so a resumed run may change them. ``resume=true`` into a folder whose fingerprint
differs is refused before any work, naming the keys that differ with both values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedvssl.data.atomic import write_bytes_atomic
from fedvssl.strategy_config import resolve_strategy

logger = logging.getLogger("fedvssl")

FINGERPRINT_FILE = "fingerprint.json"

# Keys (and whole sections) of conf/base.yaml that do not decide what a pre-training computes:
# its length, its resources and speed (bf16, channels_last, compile and augment change at most
# the last bits), where its files are, and what it logs or evaluates on the side.
PRETRAINING_FREE = (
    "rounds", "resume", "workers", "evaluate_every", "evaluation", "data_dir", "dataset.root",
    "dataset.auto_prepare", "round_timeout", "stop_after_failed_rounds", "client_resources",
    "ray_init_args", "progress", "log_interval", "pre_train", "pretrained_model_path",
    "augment", "compile", "bf16", "channels_last", "finetune",
    "strategy",  # kept resolved instead, aliases folded in (pretraining_fingerprint)
)  # fmt: skip
# The same for conf/finetune.yaml: ``epochs`` may grow on resume (the milestones stay); the
# pre-trained file counts by its content (its hash), not by its name.
FINETUNE_FREE = (
    "epochs", "resume", "workers", "validate_every", "retrieval", "eval_batch_size", "data_dir",
    "dataset.root", "dataset.auto_prepare", "published_cache", "published_url", "pretrained",
    "progress", "log_interval", "bf16", "channels_last",
)  # fmt: skip


class FingerprintError(ValueError):
    """A resumed run's deciding settings differ from those its folder was made with."""


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return the leaves of a nested config by dotted key (lists are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def deciding(cfg: Mapping[str, Any], free: tuple[str, ...]) -> dict[str, Any]:
    """Return the leaves of ``cfg`` that decide a run: all but the ``free`` keys and sections."""
    return {
        key: value
        for key, value in flatten(cfg).items()
        if not any(key == f or key.startswith(f"{f}.") for f in free)
    }


def pretraining_fingerprint(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Return the deciding settings of a pre-training config (``strategy`` resolved)."""
    strategy = resolve_strategy(cfg["strategy"])
    return deciding(cfg, PRETRAINING_FREE) | {
        f"strategy.{key}": value for key, value in dataclasses.asdict(strategy).items()
    }


def file_hash(path: str | Path) -> str:
    """Return the SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Return ``key (recorded -> now)`` for every key both hold with different values."""
    return [
        f"{key} ({json.dumps(recorded[key])} -> {json.dumps(now[key])})"
        for key in sorted(recorded.keys() & now.keys())
        if recorded[key] != now[key]
    ]


def read_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """Return the settings kept in ``run_dir`` (None when it has no fingerprint)."""
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        settings = data["settings"]
    except (ValueError, KeyError, TypeError):
        raise FingerprintError(
            f"{path} cannot be read: restore it, or choose another hydra.run.dir"
        ) from None
    if not isinstance(settings, dict):
        raise FingerprintError(f"{path} holds no settings: restore it, or choose another folder")
    return settings


def check_fingerprint(run_dir: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to resume the run in ``run_dir`` with other deciding settings than it was made with.

    A folder without a fingerprint (made before fingerprints were kept) is resumed with a warning,
    and so are keys that only one side has (a package version that added or removed a setting).

    Raises
    ------
    FingerprintError
        Naming every key that differs, with the recorded and the requested value.
    """
    recorded = read_fingerprint(run_dir)
    if recorded is None:
        logger.warning("%s has no %s: resuming unchecked", run_dir, FINGERPRINT_FILE)
        return
    now = json.loads(json.dumps(settings))  # as the file holds them: tuples are lists
    changed = differences(recorded, now)
    unmatched = sorted(recorded.keys() ^ now.keys())
    if unmatched:  # keys a newer or older package has: their defaults keep the old behaviour
        logger.warning("%s: settings not compared (kept by one side only): %s", run_dir, unmatched)
    if changed:
        raise FingerprintError(
            f"resume=true with other settings than the run in {run_dir} was made with: "
            f"{', '.join(changed)}; resume with its settings, or choose another hydra.run.dir"
        )


def write_fingerprint(run_dir: Path, settings: Mapping[str, Any]) -> None:
    """Keep the deciding settings of the run starting in ``run_dir`` (atomically)."""
    text = json.dumps({"settings": dict(settings)}, indent=1, sort_keys=True)
    write_bytes_atomic(text.encode(), run_dir / FINGERPRINT_FILE)
