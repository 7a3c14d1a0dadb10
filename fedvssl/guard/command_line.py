"""The command line of the Hydra entry points, checked before Hydra runs.

Hydra refuses an unknown key with several lines and advice to add it with ``+`` (``+epoch=3``),
which it then accepts and the run silently ignores. It also creates the run folder (and writes
into it) before the task runs, so a run folder that is a file ends in Hydra's own traceback.
:func:`check_command_line` runs first, in ``python -m fedvssl.main|finetune|report``, and refuses
with one ``error:`` line and exit status 2:

- an override Hydra's grammar cannot read, and a sweep (``a=1,2``) without ``--multirun``;
- an unknown config group option (``dataset=ucf102``), listing the options;
- an unknown key, with or without ``+`` or ``++`` (and ``~key``), suggesting the nearest known
  one; ``+key`` for a key that exists. The keys are those of the config composed with the
  command line's group choices; sections that pass their keys on (``ray_init_args`` to
  ``ray.init``; ``finetune`` of ``fedvssl.main``, checked against ``conf/finetune.yaml``) are
  open;
- a run folder (``hydra.run.dir``, or ``hydra.sweep.dir`` with ``--multirun``) that is a file
  (or lies under one), or cannot be written.

Anything it cannot analyse (another config folder, Hydra's own ``--cfg``/``--help`` modes) is left
to Hydra.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Sections whose keys are passed on rather than read from conf/: None takes any key, a config
# name takes the keys of that config.
OPEN_SECTIONS: dict[str, dict[str, str | None]] = {
    "base": {"ray_init_args": None, "finetune": "finetune"},
}
MAX_COMPOSITIONS = 16  # group choices composed to learn the known keys of a sweep

logger = logging.getLogger("fedvssl")


class CommandLineError(ValueError):
    """An override that Hydra would refuse in many lines, or accept and ignore."""


def _groups() -> dict[str, list[str]]:
    """Return the config groups of conf/ and their options."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in CONF_DIR.iterdir()
        if d.is_dir() and d.name != "hydra"
    }


def _keys(tree: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every key of a config tree, nodes and leaves, dotted."""
    keys: set[str] = set()
    for key, value in tree.items():
        keys |= {f"{prefix}{key}"} | (
            _keys(value, f"{prefix}{key}.") if isinstance(value, Mapping) else set()
        )
    return keys


def _compose(config_name: str, overrides: Sequence[str], hydra: bool = False) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: the same conf/ folder
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="check"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)


def _composed_keys(config_name: str, overrides: Sequence[str] = ()) -> set[str]:
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(_compose(config_name, overrides), resolve=False)
    return _keys({str(k): v for k, v in tree.items()}) if isinstance(tree, dict) else set()


def nearest(key: str, known: Iterable[str]) -> str | None:
    """Return the known key nearest to ``key``: a key ending with it, else the closest spelling."""
    known = sorted(known)
    ending = [k for k in known if k.endswith(f".{key}")]
    if ending:
        return min(ending, key=len)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(key: str, line: str, known: set[str], config_name: str) -> CommandLineError:
    guess = nearest(key, known)
    hint = f"did you mean {guess}? " if guess else ""
    return CommandLineError(
        f"unknown key {key!r} in {line!r}: {hint}the keys are those of conf/{config_name}.yaml "
        "and its groups; one added with '+' would be ignored"
    )


def _check_group(override: Any, options: list[str]) -> None:
    group = override.key_or_group
    chosen = (
        list(override.sweep_string_iterator())
        if override.is_sweep_override()
        else [override.value()]
    )
    for option in chosen:
        if option is not None and str(option) not in options:
            raise CommandLineError(
                f"unknown {group} {option!r} in {override.input_line!r}; the options are "
                f"{', '.join(options)} (conf/{group}/)"
            )
    if override.is_add():
        raise CommandLineError(
            f"{group} is a config group of the defaults: write {override.input_line[1:]!r} "
            "without '+'"
        )


def _group_choices(overrides: list[Any], groups: dict[str, list[str]]) -> list[list[str]]:
    """Return the group overrides to compose with: one list per combination of swept options."""
    axes = []
    for override in overrides:
        if override.key_or_group not in groups or override.is_delete():
            continue
        name = override.key_or_group
        if override.is_sweep_override():
            axes.append([f"{name}={v}" for v in override.sweep_string_iterator()])
        else:
            axes.append([f"{name}={override.value() if override.value() else 'null'}"])
    return [list(c) for c in itertools.islice(itertools.product(*axes), MAX_COMPOSITIONS)]


def _known_keys(config_name: str, choices: list[list[str]]) -> tuple[set[str], set[str]]:
    """Return the keys of the composed configs, and those of the open sections (added with +)."""
    present: set[str] = set()
    for overrides in choices:
        present |= _composed_keys(config_name, overrides)
    passed_on: set[str] = set()
    for section, other in OPEN_SECTIONS.get(config_name, {}).items():
        if other is not None:
            passed_on |= {section} | {f"{section}.{k}" for k in _composed_keys(other)}
    return present, passed_on - present


def _is_open(key: str, config_name: str) -> bool:
    sections = OPEN_SECTIONS.get(config_name, {})
    return any(key.startswith(f"{s}.") and other is None for s, other in sections.items())


def check_overrides(config_name: str, lines: list[str], multirun: bool) -> None:
    """Refuse an override that Hydra cannot read, or that names no option or key of conf/.

    Raises
    ------
    CommandLineError
        With one line naming the override and what to write instead.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        overrides = OverridesParser.create().parse_overrides(overrides=lines)
    except OverrideParseException as err:
        reason = str(err).splitlines()[0]
        raise CommandLineError(
            f"cannot read the command line ({reason}); see Hydra's override grammar: key=value, "
            "key=[a,b] for a list, quotes around text with spaces or commas"
        ) from None
    ours = [o for o in overrides if not o.key_or_group.startswith("hydra")]
    groups = _groups()
    for override in ours:
        if override.is_sweep_override() and not multirun:
            raise CommandLineError(
                f"{override.input_line!r} is a sweep: add --multirun to run each value, or write "
                "[a,b] for a list"
            )
        if override.key_or_group in groups:
            _check_group(override, groups[override.key_or_group])
    present, passed_on = _known_keys(config_name, _group_choices(ours, groups))
    for override in ours:
        key, line = override.key_or_group, str(override.input_line)
        if key in groups:
            continue
        if key in present and override.is_add():
            raise CommandLineError(f"{key} is already a key: write {line[1:]!r} without '+'")
        passed = key not in present and (key in passed_on or _is_open(key, config_name))
        if passed and override.type.name == "CHANGE":
            raise CommandLineError(f"{key} is passed on, not in the config: write '+{line}'")
        if key not in present and not passed:
            raise _unknown(key, line, present | passed_on, config_name)


def _is_sweep(line: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return bool(OverridesParser.create().parse_override(line).is_sweep_override())


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_run_folder(folder: str, key: str) -> None:
    """Refuse a run folder that is not a folder (or lies under a file), or cannot be written.

    Writing is tried, not asked (a superuser is refused by read-only file systems only): a
    temporary file in the folder, or in the nearest folder above it that exists.
    """
    path = Path(folder).absolute()
    existing = _first_existing(path)
    if not existing.is_dir():
        where = "is not a folder" if existing == path else f"lies under {existing}, not a folder"
        raise CommandLineError(f"{key}={folder} {where}: choose a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise CommandLineError(
            f"{key}={folder} cannot be written ({err.strerror or err}): choose a writable folder"
        ) from None


def command_line_problem(config_name: str, argv: list[str]) -> CommandLineError | None:
    """Return what is wrong with ``argv`` for the entry point of ``config_name`` (None: nothing)."""
    from hydra._internal.utils import get_args_parser
    from omegaconf import OmegaConf

    args = get_args_parser().parse_args(argv)
    hydra_modes = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion)
    if any(hydra_modes) or args.config_path or args.config_dir or args.experimental_rerun:
        return None
    name = args.config_name or config_name
    try:
        check_overrides(name, args.overrides, args.multirun)
        chosen = [o for o in args.overrides if not _is_sweep(o)]  # a sweep does not compose
        cfg = _compose(name, chosen, hydra=True)
        key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
        folder = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if isinstance(folder, str):
            check_run_folder(folder, key)
    except CommandLineError as err:
        return err
    except Exception:  # what this cannot analyse, Hydra reports itself
        return None
    return None


def check_command_line(config_name: str, argv: list[str] | None = None) -> None:
    """Refuse a bad command line with one ``error:`` line and exit status 2 (see the docstring)."""
    problem = command_line_problem(config_name, sys.argv[1:] if argv is None else argv)
    if problem is None:
        return
    handler = logging.StreamHandler(sys.stdout)  # Hydra has not configured logging yet
    handler.setFormatter(logging.Formatter("[%(asctime)s][ERROR] %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.error("error: %s", problem)
    sys.exit(2)
