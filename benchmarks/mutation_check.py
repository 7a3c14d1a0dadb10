r"""Inject one-line device and dtype bugs and see which tests catch them: the CPU ones or ``cuda``.

Each bug of ``benchmarks/device_bugs.toml`` (a file, a fragment of one of its lines, the
replacement) is put into a scratch copy of the repository (the files git tracks and the
untracked ones it does not ignore), one bug at a time, and two selections of tests run there
against the bug, each stopping at its first failure:

- ``cpu``: the CPU tests of the modules the bugs live in (``--cpu-tests``, run with
  ``-k "not cuda"``);
- ``cuda``: ``pytest -k cuda``, the tests that run the package's CUDA branches under the
  pretend-CUDA harness (``tests/pretend_cuda.py``) and the harness's own tests.

A bug is caught by a selection when it fails (a failing test, or an error such as a failed
import). Both selections first run on the unchanged copy, which must pass: a bug counts only
against a green baseline. The report gives, per bug and selection, caught or not, the seconds
and the first failing test; ``--markdown`` writes the table docs/benchmarks.md shows. The
scratch copy is imported through ``PYTHONPATH`` ahead of the editable install (checked).

    python -m benchmarks.mutation_check [--bugs NAME...] [--output FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import machine_info, write_report

ROOT = Path(__file__).resolve().parents[1]
BUGS = Path(__file__).with_name("device_bugs.toml")
CPU_TESTS = (
    "tests/test_device_augmentation.py", "tests/test_train.py", "tests/test_client.py",
    "tests/test_retrieval.py", "tests/test_classifier.py", "tests/test_ctp.py",
    "tests/test_finetune.py",
)  # fmt: skip
SELECTIONS = {"cpu": "not cuda", "cuda": "cuda"}


@dataclass(frozen=True)
class Bug:
    """One injected bug: in ``file``, the line holding ``find`` gets ``replace`` instead."""

    name: str
    kind: str
    file: str
    find: str
    replace: str
    why: str

    def inject(self, text: str) -> str:
        """Return ``text`` with the bug in; refuse a ``find`` that is not on exactly one line."""
        lines = text.splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if self.find in line]
        if len(hits) != 1:
            raise SystemExit(
                f"bug {self.name}: {self.file} has {len(hits)} lines with {self.find!r}, not "
                f"1; update benchmarks/device_bugs.toml"
            )
        lines[hits[0]] = lines[hits[0]].replace(self.find, self.replace)
        return "".join(lines)


def load_bugs(path: Path, names: list[str] | None) -> list[Bug]:
    """Read the bug list, keeping ``names`` (all when None) in the file's order."""
    try:
        bugs = [Bug(**entry) for entry in tomllib.loads(path.read_text())["bug"]]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not a list of [[bug]] tables ({err})") from None
    unknown = set(names or ()) - {b.name for b in bugs}
    if unknown:
        raise SystemExit(f"--bugs: no bug named {', '.join(sorted(unknown))} in {path}")
    return [b for b in bugs if names is None or b.name in names]


def scratch_copy(target: Path) -> None:
    """Copy the repository's files (tracked, and untracked but not ignored) into ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        raise SystemExit(f"git ls-files failed in {ROOT}: {listed.stderr.strip()}")
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def scratch_env(target: Path) -> dict[str, str]:
    """Return the environment that imports the scratch copy's packages (checked)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    where = subprocess.run(
        [sys.executable, "-c", "import CtP, fedvssl; print(CtP.__file__, fedvssl.__file__)"],
        cwd=target, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if not all(Path(p).is_relative_to(target) for p in where.stdout.split()) or not where.stdout:
        raise SystemExit(
            f"the scratch copy is not what Python imports: {where.stdout}{where.stderr}"
        )
    return env


def run_tests(
    target: Path, env: dict[str, str], files: list[str], keyword: str, timeout: float
) -> dict[str, Any]:
    """Run one selection; caught = it failed. Returns rc, seconds and the first failure."""
    command = [
        sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
        "-k", keyword, *files,
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=target, env=env, capture_output=True, text=True, timeout=timeout
        )
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc, output = -1, f"timed out after {timeout:.0f} s\n{err.stdout!r}"
    failure = re.search(r"^(FAILED|ERROR) (.*)$", output, flags=re.MULTILINE)
    return {
        "caught": rc != 0,
        "rc": rc,
        "seconds": round(time.perf_counter() - started, 1),
        "first_failure": failure.group(2)[:300] if failure else None,
        "tail": output.strip().splitlines()[-1:] if rc not in (0, 1) else [],
    }


def markdown(report: dict[str, Any]) -> str:
    """Return the report as a Markdown table, one row per bug."""
    mark = {True: "caught", False: "**missed**"}
    rows = [
        "| bug | kind | where | CPU tests | `cuda` tests | first `cuda` test to fail |",
        "|---|---|---|---|---|---|",
    ]
    for bug in report["bugs"]:
        first = (bug["cuda"]["first_failure"] or "").split(" - ")[0].split("::")[-1]
        rows.append(
            f"| `{bug['name']}`: {bug['why']} | {bug['kind']} | `{bug['file']}` | "
            f"{mark[bug['cpu']['caught']]} | {mark[bug['cuda']['caught']]} | `{first}` |"
        )
    summary = report["summary"]
    rows.append(
        f"\n{summary['bugs']} bugs: the CPU tests catch {summary['caught_by_cpu']}, the `cuda` "
        f"tests {summary['caught_by_cuda']}."
    )
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bugs", nargs="+", help="bug names (default: all of --bug-file)")
    parser.add_argument("--bug-file", type=Path, default=BUGS, help="the TOML list of bugs")
    parser.add_argument("--cpu-tests", nargs="+", default=list(CPU_TESTS), help="CPU test files")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per test run")
    parser.add_argument("--output", type=Path, help="JSON file (default: stdout)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the baseline, then every bug, and write the report."""
    args = parse_args(argv)
    bugs = load_bugs(args.bug_file, args.bugs)
    selections = {"cpu": args.cpu_tests, "cuda": ["tests"]}
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as scratch:
        target = Path(scratch)
        scratch_copy(target)
        env = scratch_env(target)
        report: dict[str, Any] = {
            "benchmark": "mutation_check",
            "machine": machine_info(),
            "selections": {
                name: {"files": files, "keyword": SELECTIONS[name]}
                for name, files in selections.items()
            },
            "baseline": {},
            "bugs": [],
        }
        for name, files in selections.items():
            report["baseline"][name] = run_tests(target, env, files, SELECTIONS[name], args.timeout)
            if report["baseline"][name]["caught"]:
                raise SystemExit(
                    f"the {name} tests fail without any bug: {report['baseline'][name]}"
                )
        for bug in bugs:
            path = target / bug.file
            original = path.read_text()
            path.write_text(bug.inject(original))
            row: dict[str, Any] = {k: getattr(bug, k) for k in ("name", "kind", "file", "why")}
            for name, files in selections.items():
                row[name] = run_tests(target, env, files, SELECTIONS[name], args.timeout)
            path.write_text(original)
            report["bugs"].append(row)
            report["summary"] = {
                "bugs": len(report["bugs"]),
                "caught_by_cpu": sum(b["cpu"]["caught"] for b in report["bugs"]),
                "caught_by_cuda": sum(b["cuda"]["caught"] for b in report["bugs"]),
            }
            if args.output is not None:  # a run cut short keeps what it found
                write_report(report, args.output)
            print(f"[mutation_check] {bug.name}: cpu {row['cpu']['caught']}, "
                  f"cuda {row['cuda']['caught']}", file=sys.stderr)  # fmt: skip
    if args.output is None:
        write_report(report, None)
    if args.markdown is not None:
        args.markdown.write_text(markdown(report))


if __name__ == "__main__":
    main()
