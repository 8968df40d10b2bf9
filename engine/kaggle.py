"""The Kaggle layout: train.csv / test.csv reading and checks, row by row (no torch, no decoding)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CsvError

TRAIN_CSV, TEST_CSV = "train.csv", "test.csv"


@dataclass(frozen=True)
class Row:
    csv: str  # train.csv | test.csv
    line: int  # physical line number in the file (header is line 1)
    index: int  # 0-based data row: the order export keeps
    file_name: str
    label: int | None  # None for test rows
    group: str = ""  # train.csv's optional `group` column (images kept on one side of every split)


@dataclass(frozen=True)
class Reject:
    csv: str
    line: int
    file_name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.csv}:{self.line}: {self.file_name or '<empty>'}: {self.reason}"


def _parse_label(text: str) -> int | None:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


def read_rows(path: Path, *, need: tuple[str, ...],
               optional: tuple[str, ...] = ()) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise CsvError(f"{path}: file not found (the Kaggle layout has train.csv and test.csv)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise CsvError(f"{path}: empty file, expected a header with {', '.join(need)}")
            header = [h.strip() for h in header]
            missing = [c for c in need if c not in header]
            if missing:
                raise CsvError(f"{path}: missing column {', '.join(missing)} (header is {','.join(header)})")
            cols = {c: header.index(c) for c in (*need, *optional) if c in header}
            rows = []
            for values in reader:
                if any(v.strip() for v in values):
                    rows.append((reader.line_num, {c: values[i] if i < len(values) else ""
                                                   for c, i in cols.items()}))
        except UnicodeDecodeError as e:
            raise CsvError(f"{path}: not UTF-8 text after line {reader.line_num} ({e.reason} at byte "
                           f"{e.start})") from None
    return rows


def read_kaggle_csvs(root: Path) -> tuple[list[Row], list[Reject]]:
    """Both CSVs' rows that pass the text checks (label, path, duplicates), plus the rejects.

    Raises CsvError before yielding anything if either CSV or a needed column is missing,
    so a broken folder writes nothing.
    """
    train = list(read_rows(root / TRAIN_CSV, need=("file_name", "label"), optional=("group",)))
    test = list(read_rows(root / TEST_CSV, need=("id",)))
    rows: list[Row] = []
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    sources = [(TRAIN_CSV, line, r["file_name"], r["label"], r.get("group", "")) for line, r in train]
    sources += [(TEST_CSV, line, r["id"], None, "") for line, r in test]
    counters = {TRAIN_CSV: 0, TEST_CSV: 0}
    for name, line, file_name, label_text, group in sources:
        file_name = file_name.strip()
        index = counters[name]
        counters[name] += 1
        reason = path_problem(root, file_name)
        label = None
        if reason is None and label_text is not None:
            label = _parse_label(label_text)
            if label is None:
                reason = f"label {label_text.strip()!r} is not 0 or 1"
        if reason is None and file_name in seen:
            reason = f"duplicate id (first seen at {seen[file_name]})"
        if reason is not None:
            rejects.append(Reject(name, line, file_name, reason))
            continue
        seen[file_name] = f"{name}:{line}"
        rows.append(Row(name, line, index, file_name, label, group.strip()))
    return rows, rejects


def path_problem(root: Path, file_name: str) -> str | None:
    """Why a CSV path may not be used, or None. Paths must stay inside the dataset root."""
    if not file_name:
        return "empty file name"
    if any(ord(c) < 32 for c in file_name):
        return "control character in the file name"
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")) or ":" in file_name[:3]:
        return "absolute path (paths must be relative to DATA_DIR)"
    if ".." in Path(file_name.replace("\\", "/")).parts:
        return "path escapes DATA_DIR"
    return None
