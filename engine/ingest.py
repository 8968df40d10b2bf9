"""`aivh import`: a Kaggle-layout folder into the store, in one transaction."""
from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from db import labelling, predictions, queries
from db.models import Dataset, Image, Label
from engine.images import FileMeta, ImageInfo, probe_image, probe_meta, resolve_inside
from engine.kaggle import TRAIN_CSV, Reject, Row, read_kaggle_csvs

SERIAL_BELOW = 2000  # rows: below this, starting worker processes costs more than it saves


EXAMPLES = 5  # changed labels or groups named in the text and JSON (the count says how many)


@dataclass
class ImportResult:
    dataset: str
    train: int = 0  # images of each split now in the store and readable
    test: int = 0
    added: int = 0  # readable images new this time (new rows, or rows whose file was missing or unreadable)
    rejects: list[Reject] = field(default_factory=list)
    # files replaced since the last import (other bytes than recorded), re-probed; a file only
    # touched (new modification time, same bytes) is re-stamped, and a missing one is a reject
    changed: list[str] = field(default_factory=list)
    duplicate_groups: int = 0  # sets of byte-identical readable images (same sha1) in the dataset
    # the groups among them whose training copies carry different current labels:
    # [{"sha1", "files": [{"file_name", "split", "label"}]}]
    label_conflicts: list[dict] = field(default_factory=list)
    summary: str | None = None  # when every row was rejected: the one line NothingImported says
    metadata_filled: int = 0  # stored images whose header properties were read this time (pre-0004 rows)
    predictions_dropped: int = 0  # every run's predictions of the changed files (another picture's)
    # training images whose train.csv label is not the one the store last recorded from it, or whose
    # current label was given before its file was replaced and is not train.csv's:
    # [{"file_name", "image_id", "csv_label", "imported_label", "current_label", "content_changed"}]
    # (content_changed: the current label was given to the picture the file held before);
    # recorded as label rows by import only when applied
    label_changes: list[dict] = field(default_factory=list)
    label_changes_applied: bool = False
    # images whose train.csv group is not the recorded one: [{"file_name", "csv_group", "recorded_group"}]
    group_changes: list[dict] = field(default_factory=list)
    group_changes_applied: bool = False
    groups_filled: int = 0  # stored images whose group was recorded this time (pre-0006 rows)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset, "train": self.train, "test": self.test, "added": self.added,
            "rejected": len(self.rejects),
            "rejects": [{"csv": r.csv, "line": r.line, "file_name": r.file_name, "reason": r.reason}
                        for r in self.rejects],
            "changed": self.changed, "duplicate_groups": self.duplicate_groups,
            "label_conflicts": self.label_conflicts,
            "metadata_filled": self.metadata_filled, "predictions_dropped": self.predictions_dropped,
            "label_changes": len(self.label_changes), "label_change_examples": self.label_changes[:EXAMPLES],
            "label_changes_applied": self.label_changes_applied,
            "group_changes": len(self.group_changes), "group_change_examples": self.group_changes[:EXAMPLES],
            "group_changes_applied": self.group_changes_applied, "groups_filled": self.groups_filled,
        }

    def duplicates_line(self) -> str | None:
        """One line on byte-identical copies, or None when there are none."""
        if not self.duplicate_groups:
            return None
        line = (f"{self.duplicate_groups} group(s) of byte-identical images under different names "
                "(each group stays on one side of every split and audit fold)")
        if self.label_conflicts:
            first = ", ".join(f"{f['file_name']}={f['label']}" for f in self.label_conflicts[0]["files"])
            line += (f"; {len(self.label_conflicts)} with copies labelled differently, e.g. {first}: "
                     "relabel them to agree")
        return line

    def label_changes_line(self) -> str | None:
        """One line on labels edited in train.csv since the last import, or None."""
        if not self.label_changes:
            return None
        n = len(self.label_changes)
        examples = "; ".join(_label_example(c) for c in self.label_changes[:EXAMPLES])
        if self.label_changes_applied:
            return f"{n} label(s) changed in train.csv recorded as label rows by import, e.g. {examples}"
        stale = any(c["content_changed"] for c in self.label_changes)
        return (f"{n} label(s) in train.csv differ from the store's, e.g. {examples}: not recorded; "
                "`aivh import DATA_DIR --apply-label-changes` records them as label rows by import"
                + ("; a label given to a replaced file's old picture is reported at every import until "
                   "then, or until someone labels the image again" if stale else ""))

    def group_changes_line(self) -> str | None:
        """One line on groups edited in train.csv since the last import, or None."""
        if not self.group_changes:
            return None
        n = len(self.group_changes)
        examples = "; ".join(
            f"{c['file_name']}: {c['recorded_group'] or '(none)'} -> {c['csv_group'] or '(none)'}"
            for c in self.group_changes[:EXAMPLES])
        if self.group_changes_applied:
            return (f"{n} group(s) changed in train.csv recorded (later splits and audits use them), "
                    f"e.g. {examples}")
        return (f"{n} group(s) in train.csv differ from the recorded ones, e.g. {examples}: not recorded, "
                "splits keep the recorded groups; `aivh import DATA_DIR --apply-group-changes` records them")


def _label_example(c: dict) -> str:
    text = f"{c['file_name']}: {c['imported_label']} -> {c['csv_label']}"
    if c["content_changed"]:
        text += " (file replaced"
        if c["current_label"] != c["imported_label"]:
            text += f"; current label {c['current_label']}, given to the old picture"
        return text + ")"
    if c["current_label"] != c["imported_label"]:
        text += f" (current label {c['current_label']})"
    return text


class NothingImported(ValueError):
    """Every row was rejected: one line (the shared reason, an example row, what to do); the
    import wrote nothing. `result` holds the rejects."""

    def __init__(self, result: ImportResult):
        super().__init__(result.summary)
        self.result = result


@dataclass(frozen=True)
class Folder:
    """A Kaggle-layout folder's CSVs, read and checked: all that import needs before the store."""
    root: Path
    rows: list[Row]
    rejects: list[Reject]
    probed: dict[str, ImageInfo | str] | None = None  # file name -> probe_image's answer, when read ahead


def read_folder(data_dir: str | Path) -> Folder:
    """The folder's rows and text rejects; FileNotFoundError or CsvError (one line) when it is no
    Kaggle folder, so a command can check its argument before opening (or creating) a store."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    rows, rejects = read_kaggle_csvs(root)  # raises CsvError before anything is written
    return Folder(root, rows, rejects)


def probe_folder(folder: Folder, *, progress: bool = True) -> Folder:
    """Every file probed ahead of the store (a first import, where each is probed anyway):
    NothingImported when no row is readable, so a failing first import creates no store."""
    infos = _probe_all(folder.root, [r.file_name for r in folder.rows], progress=progress)
    probed = dict(zip((r.file_name for r in folder.rows), infos))
    if not any(not isinstance(info, str) for info in infos):
        result = ImportResult(folder.root.name, rejects=sorted(
            [*folder.rejects, *(Reject(r.csv, r.line, r.file_name, probed[r.file_name]) for r in folder.rows)],
            key=lambda r: (r.csv != TRAIN_CSV, r.line)))
        result.summary = _summary(result, len(folder.rows) + len(folder.rejects))
        if result.summary:
            raise NothingImported(result)
    return replace(folder, probed=probed)


def _probe_all(root: Path, names: list[str], *, progress: bool, probe=None,
               desc: str = "probing images") -> list:
    """Header, a cheap decode check, size, mtime and sha1 of every file (or another per-file
    probe). Processes, not threads: PIL's header parsing holds the GIL, and threads measured
    slower than one loop (390 vs 200 us per file, before the decode check was added)."""
    probe = probe or probe_image
    bar = {"total": len(names), "desc": desc, "unit": "img", "disable": not progress,
           "mininterval": 0.5}
    workers = 2 * (os.cpu_count() or 1)  # twice the cores: cold reads wait on the disk
    if len(names) < SERIAL_BELOW:
        return list(tqdm((probe(root, n) for n in names), **bar))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(tqdm(pool.map(partial(probe, root), names, chunksize=256), **bar))


def import_dataset(sessions: sessionmaker[Session], data_dir: str | Path | Folder, name: str | None = None,
                   *, progress: bool = True, apply_label_changes: bool = False,
                   apply_group_changes: bool = False) -> ImportResult:
    """Import (or import again) a Kaggle folder, in one transaction. Labels and groups edited in
    train.csv since the last import are reported, and recorded only when asked (`apply_*`).
    NothingImported (and nothing written) when every row is rejected and the dataset holds no
    readable image."""
    folder = data_dir if isinstance(data_dir, Folder) else read_folder(data_dir)
    root, rows = folder.root, folder.rows
    name = name or root.name
    total = len(rows) + len(folder.rejects)
    with sessions.begin() as s:
        ds = _dataset(s, name, root)
        known = queries.existing_paths(s, ds.id)
        changed = _changed_on_disk(root, [r for r in rows if known.get(r.file_name, (0, ""))[1] == "ok"],
                                   queries.image_stamps(s, ds.id))
        todo = [r for r in rows if r.file_name not in known or known[r.file_name][1] != "ok"
                or r.file_name in changed]
        ahead = folder.probed or {}
        unprobed = [r.file_name for r in todo if r.file_name not in ahead]
        probed = dict(zip(unprobed, _probe_all(root, unprobed, progress=progress)))
        infos = [ahead[r.file_name] if r.file_name in ahead else probed[r.file_name] for r in todo]
        result = ImportResult(name, rejects=list(folder.rejects))
        new_images, new_rows, recovered, gone, replaced = [], [], [], [], []
        readable_again = 0
        stored_sha1 = queries.image_sha1s(s, ds.id) if any(r.file_name in known for r in todo) else {}
        for row, info in zip(todo, infos):
            if isinstance(info, str):
                result.rejects.append(Reject(row.csv, row.line, row.file_name, info))
            old = known.get(row.file_name)
            values = _image_values(ds.id, row, info)
            if old is None:
                new_images.append({**values, "csv_group": row.group})
                new_rows.append(row)
                continue
            # a stored image: replaced only when its bytes are there and are not the recorded ones
            # (a touched file, same bytes, is re-stamped; a missing one is a reject, not replaced)
            was, now = stored_sha1.get(row.file_name), _content_sha1(root, row.file_name, info)
            if was is not None and now is not None and now != was:
                result.changed.append(row.file_name)
                replaced.append(old[0])
            if not isinstance(info, str):
                recovered.append({"id": old[0], **values})
                readable_again += old[1] != "ok"  # missing or unreadable last time, there now
            elif now is None:  # gone or unreadable now: marked so, its recorded content kept
                gone.append({"id": old[0], "status": "unreadable"})
            else:  # other bytes that are no image: what is there now
                recovered.append({"id": old[0], **values, "sha1": now})
        _insert(s, new_images, new_rows)
        filled = _fill_meta(s, root, ds.id, {r.file_name for r in todo}, progress=progress)
        for batch in (recovered, gone):  # a file there again or replaced since; one gone
            if batch:
                s.execute(update(Image), batch)
        # what any run predicted for a replaced file was another picture's: gone, so export and
        # the pages ask for a new prediction instead of using it; and the labels given so far were
        # given to the old picture (db.queries.mark_replaced)
        result.predictions_dropped = predictions.drop_for_images(s, replaced)
        queries.mark_replaced(s, replaced)
        _label_changes(s, ds.id, rows, known, result, apply=apply_label_changes)
        _group_changes(s, ds.id, rows, known, result, apply=apply_group_changes)
        result.added = readable_again + sum(v["status"] == "ok" for v in new_images)
        result.metadata_filled = filled
        result.rejects.sort(key=lambda r: (r.csv != TRAIN_CSV, r.line))
        for split in ("train", "test"):
            setattr(result, split, queries.count_images(s, ds.id, split))
        _report_duplicates(s, ds.id, result)
        result.summary = _summary(result, total)
        if result.summary:  # every row rejected and nothing readable: an error, the transaction undone
            raise NothingImported(result)
    return result


def _content_sha1(root: Path, name: str, info: ImageInfo | str) -> str | None:
    """sha1 of the file's bytes now (probed, or read here for a file that is no image); None when
    it cannot be read (missing, a folder, outside DATA_DIR) or is empty."""
    if not isinstance(info, str):
        return info.sha1
    try:
        data = resolve_inside(root, name).read_bytes()
    except (OSError, PermissionError):
        return None
    return hashlib.sha1(data).hexdigest() if data else None


def _label_changes(s: Session, dataset_id: int, rows: list[Row], known: dict[str, tuple[int, str]],
                   result: ImportResult, *, apply: bool) -> None:
    """The stored training images whose label in train.csv is not the one last recorded from it
    (an edited CSV), or whose current label was given before their file was replaced (at this
    import or an earlier one: db.labelling.labelled_before_replaced) and is not train.csv's (a
    label of the old picture); with `apply`, train.csv's label recorded as a label row by import
    (db.labelling.relabel) for each, in the import's transaction."""
    stored = [(r, known[r.file_name][0]) for r in rows if r.label is not None and r.file_name in known]
    if not stored:
        return
    recorded = labelling.csv_labels(s, dataset_id)
    stale = labelling.labelled_before_replaced(s, dataset_id)
    # no image has an import row only when it was not a training image: skipped
    candidates = [(r, i) for r, i in stored if i in recorded and (r.label != recorded[i] or i in stale)]
    if not candidates:
        return
    among = [i for _, i in candidates] if len(candidates) <= 1000 else None  # else: one query for all
    current = labelling.current_labels(s, dataset_id, among=among)
    for row, i in candidates:
        imported, now = recorded[i], current.get(i)
        content = i in stale
        if row.label != imported or (content and now is not None and row.label != now):
            result.label_changes.append({"file_name": row.file_name, "image_id": i, "csv_label": row.label,
                                         "imported_label": imported, "current_label": now,
                                         "content_changed": content})
    if apply:
        for c in result.label_changes:
            if c["csv_label"] != c["imported_label"]:
                note = f"train.csv edited: {c['imported_label']} -> {c['csv_label']}"
            else:
                note = f"file replaced: label {c['current_label']} was given to the old picture"
            if c["content_changed"] and c["csv_label"] != c["imported_label"]:
                note += f"; file replaced (label {c['current_label']} was given to the old picture)"
            labelling.relabel(s, c["image_id"], c["csv_label"], author="import", source="import", note=note)
        result.label_changes_applied = bool(result.label_changes)


def _group_changes(s: Session, dataset_id: int, rows: list[Row], known: dict[str, tuple[int, str]],
                   result: ImportResult, *, apply: bool) -> None:
    """Groups of stored images: recorded where none was (rows imported before migration 0006:
    `groups_filled`), compared with train.csv's elsewhere; a changed one is recorded with `apply`."""
    stored = queries.image_groups(s, dataset_id)
    fill, moved = {}, {}
    for r in rows:
        if r.file_name not in known:
            continue
        was = stored.get(r.file_name)
        if was is None:
            fill[known[r.file_name][0]] = r.group
        elif was != r.group:
            moved[known[r.file_name][0]] = r.group
            result.group_changes.append({"file_name": r.file_name, "csv_group": r.group,
                                         "recorded_group": was})
    queries.set_groups(s, fill)
    result.groups_filled = len(fill)
    if apply and moved:
        queries.set_groups(s, moved)
        result.group_changes_applied = True


def _fill_meta(s: Session, root: Path, dataset_id: int, probed: set[str], *, progress: bool) -> int:
    """Header properties for the readable images recorded before they were (migration 0004)
    and not probed again this time: headers only, no pixel decode, no hash. Returns how many."""
    todo = [(i, path) for path, i in queries.images_without_meta(s, dataset_id).items() if path not in probed]
    if not todo:
        return 0
    metas = _probe_all(root, [p for _, p in todo], progress=progress, probe=probe_meta,
                       desc="reading headers")
    filled = [{"id": i, **m.columns()} for (i, _), m in zip(todo, metas) if m is not None]
    if filled:
        s.execute(update(Image), filled)
    return len(filled)


def _changed_on_disk(root: Path, rows: list[Row], stamps: dict[str, tuple]) -> set[str]:
    """The stored readable images whose size or modification time on disk is not the one
    recorded, or that are gone (one stat each, no read): those are probed again, and the
    probe's sha1 says whether the content changed. A store from before mtimes were recorded is
    probed once to record them."""
    out: set[str] = set()
    base = str(root)
    for r in rows:
        size, mtime_ns = stamps.get(r.file_name, (None, None))
        try:
            st = os.stat(os.path.join(base, r.file_name))  # not pathlib: 80,000 of these
        except OSError:
            out.add(r.file_name)  # gone or unreadable now: the probe says which
            continue
        if st.st_size != size or mtime_ns is None or st.st_mtime_ns != mtime_ns:
            out.add(r.file_name)
    return out


def _report_duplicates(s: Session, dataset_id: int, result: ImportResult) -> None:
    groups = queries.duplicate_groups(s, dataset_id)
    result.duplicate_groups = len(groups)
    if not groups:
        return
    labels = labelling.current_labels(s, dataset_id)
    for sha1, members in groups:
        labelled = {labels[i] for i, _, split in members if split == "train" and i in labels}
        if len(labelled) > 1:
            result.label_conflicts.append({"sha1": sha1, "files": [
                {"file_name": path, "split": split, "label": labels.get(i)} for i, path, split in members]})


# what to do when every row fails for one reason (the reason's words up to its first bracket)
_ADVICE = {
    "a symlink leads outside DATA_DIR": "aivh reads images only from inside DATA_DIR: copy the image "
                                        "folders in (cp -rL) rather than linking them, or import the "
                                        "folder the links point to",
    "missing file": "check that the image folders sit in DATA_DIR beside train.csv and that the CSV's "
                    "paths are relative to DATA_DIR",
    "not an image": "the files hold no images (failed downloads?): fetch the dataset again",
}


def _kind(reason: str) -> str:
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def _summary(result: ImportResult, rows: int) -> str | None:
    """One line when no row at all was imported: the shared reason, the first row rejected, and
    what to do about it."""
    if not result.rejects or len(result.rejects) < rows or result.train or result.test:
        return None
    kinds = {_kind(r.reason) for r in result.rejects}
    first = result.rejects[0]
    if len(kinds) > 1:
        second = next(r for r in result.rejects if _kind(r.reason) != _kind(first.reason))
        return (f"nothing imported: all {rows} rows were rejected, for {len(kinds)} different reasons, "
                f"e.g. {first}; {second}")
    kind = kinds.pop()
    advice = _ADVICE.get(kind)
    if advice is None:
        return f"nothing imported: all {rows} rows were rejected, e.g. {first}"
    return f"nothing imported: all {rows} rows were rejected ({kind}, e.g. {first.csv}:{first.line}: " \
           f"{first.file_name}): {advice}"


def _dataset(s: Session, name: str, root: Path) -> Dataset:
    ds = s.scalar(select(Dataset).where(Dataset.name == name))
    if ds is None:
        ds = Dataset(name=name, root=str(root))
        s.add(ds)
        s.flush()
    elif Path(ds.root) != root:
        raise ValueError(f"dataset {name!r} already points to {ds.root}; pick another --name")
    return ds


def _image_values(dataset_id: int, row: Row, info: ImageInfo | str) -> dict:
    ok = not isinstance(info, str)
    return {
        "dataset_id": dataset_id, "rel_path": row.file_name,
        "split": "train" if row.csv == TRAIN_CSV else "test", "csv_row": row.index,
        "width": info.width if ok else None, "height": info.height if ok else None,
        "bytes": info.bytes if ok else None, "sha1": info.sha1 if ok else None,
        "mtime_ns": info.mtime_ns if ok else None, "status": "ok" if ok else "unreadable",
        "phash": None,  # a changed file is hashed again at its next use (engine.duplicates)
        **(info.meta if ok and info.meta else _NO_META).columns(),
    }


_NO_META = FileMeta(None, None, has_exif=None, has_icc=None)  # an unreadable file's columns


def _insert(s: Session, values: list[dict], rows: list[Row]) -> None:
    """Images, then each train image's label as the first row of its history."""
    if not values:
        return
    s.execute(Image.__table__.insert(), values)
    ids = queries.existing_paths(s, values[0]["dataset_id"])
    labels = [{"image_id": ids[r.file_name][0], "label": r.label, "source": "import", "author": "import"}
              for r in rows if r.label is not None]
    if labels:
        s.execute(Label.__table__.insert(), labels)
