"""What a preparation did and what it left out: the summary lines and ``preparation_report.json``.

A preparation never stops for one bad row or video: rows without a video, videos that do not
decode (or decode only in part), duplicate rows, unknown classes, malformed rows and partition
entries whose video is not there are left out and counted. The summary names the first few of
each kind; the report file beside the dataset lists them all. The report describes the prepared
dataset, not the run, so a run that was killed and run again writes the same file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvssl.data.annotations import write_json_atomic

REPORT_FILE = "preparation_report.json"  # in the dataset root
SHOWN = 10  # entries of each kind named in the summary when a report file lists them all


@dataclass
class PreparationReport:
    """What a preparation run did, and what it had to leave out."""

    dataset: str
    root: Path
    train: int = 0  # videos in the written train / test annotations
    test: int = 0
    extracted: int = 0  # videos decoded in this run
    skipped: int = 0  # videos whose zip was already there
    missing: list[str] = field(default_factory=list)  # listed, but no video file
    failed: dict[str, str] = field(default_factory=dict)  # name -> why it could not be decoded
    partial: dict[str, str] = field(default_factory=dict)  # decoding stopped early: frames kept
    duplicates: list[str] = field(default_factory=list)  # rows naming a video listed before
    unknown_classes: list[str] = field(default_factory=list)  # rows of a class not in the index
    malformed: list[str] = field(default_factory=list)  # rows that could not be read
    dropped: list[str] = field(default_factory=list)  # partition entries whose video is not here
    annotation_files: list[Path] = field(default_factory=list)
    partition_files: list[Path] = field(default_factory=list)
    report_file: Path | None = None

    def left_out(self) -> dict[str, Any]:
        """Return every entry left out, by kind (the body of the report file)."""
        return {
            "no video": self.missing,
            "cannot be decoded": self.failed,
            "decoded in part, frames before the error kept": self.partial,
            "duplicate row": self.duplicates,
            "class not in the class index": self.unknown_classes,
            "malformed row": self.malformed,
            "partition entry without a prepared video": self.dropped,
        }

    def lines(self) -> list[str]:
        """Return a human-readable summary, one line per fact."""
        out = [
            f"{self.dataset}: {self.train} train and {self.test} test videos in {self.root}",
            f"frames: {self.extracted} extracted, {self.skipped} already there, in "
            + str(self.root / "zips"),
        ]
        out += [f"annotations: {path}" for path in self.annotation_files]
        if self.partition_files:
            folder = self.partition_files[0].parent
            out.append(f"partitions: {len(self.partition_files)} clients in {folder}")
        shown = SHOWN if self.report_file is not None else None
        for kind, entries in self.left_out().items():
            if not entries:
                continue
            items = (
                [f"{k}: {v}" for k, v in sorted(entries.items())]
                if isinstance(entries, dict)
                else list(entries)
            )
            more = len(items) - len(items[:shown])
            out.append(f"left out, {kind} ({len(items)}):")
            out += [f"  {item}" for item in items[:shown]]
            if more:
                out.append(f"  ... and {more} more in {self.report_file}")
        if self.report_file is not None:
            out.append(f"report: {self.report_file}")
        return out


def write_report(report: PreparationReport) -> Path:
    """Write ``<root>/preparation_report.json`` atomically; remember it in the report."""
    body = {
        "dataset": report.dataset,
        "train": report.train,
        "test": report.test,
        "partitions": len(report.partition_files),
        "counts": {kind: len(entries) for kind, entries in report.left_out().items()},
        "left out": report.left_out(),
    }
    report.report_file = write_json_atomic(body, report.root / REPORT_FILE)
    return report.report_file
