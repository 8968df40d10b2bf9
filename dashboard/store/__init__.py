"""The dashboard's one door to the store: cached loaders and the actions pages perform.

Only this package opens database sessions (sessions.py); loaders.py reads, actions.py writes,
reports.py holds the Shift page's reports. Pages import `dashboard.store` and call what it
names here; pages call its functions and get plain frames,
values and detached rows. Loaders only read (a run whose owner died shows as such, see
ui.status_text); actions write: relabel, undo, save a threshold, freeze an evaluation set,
start, retrain, resume, cancel, export. Stale runs are reaped where a run action happens.
Every cached loader is keyed on everything that can change its result, read cheaply on each
call (one small query): the label version, the run's predictions version, the run's state, the
test images and test.csv. New predictions, a new best epoch or a finished run show on the next rerun.
"""
from __future__ import annotations

from dashboard.store.actions import (  # noqa: F401 - what pages call
    cancel,
    explain,
    export,
    freeze_validation,
    relabel,
    resume,
    retrain,
    save_threshold,
    start_probe,
    start_run,
    undo,
    weights_problems,
)
from dashboard.store.loaders import (  # noqa: F401 - what pages call
    SubmissionScores,
    audit_frame,
    audits,
    best_epochs,
    compare_runs,
    dataset_counts,
    dataset_names,
    dataset_root,
    epochs_for_runs,
    eval_set_names,
    export_checks,
    exports,
    image_sha1s,
    label_history,
    labelled_val,
    labels_changed,
    prediction_frame,
    provenance,
    run_version,
    run_with_epochs,
    runs_by_id,
    submission_scores,
    threshold_warnings,
)
from dashboard.store.neighbours import (  # noqa: F401 - what pages call
    compute_map,
    duplicates,
    embeddings_source,
    has_embeddings,
    hash_images,
    image_frame,
    map_frame,
    map_ready,
    meta_columns,
    more_like_this,
    relabel_many,
    selection_frame,
    unhashed,
)
from dashboard.store.reports import (  # noqa: F401 - what pages call
    robustness,
    shortcut_report,
    slice_ids,
    slices,
)
from dashboard.store.sweeps import (  # noqa: F401 - what pages call
    default_space,
    resume_sweep,
    start_sweep,
    sweep_figures,
    sweep_summary,
    sweep_trials,
    sweeps,
)
from db import labelling
from db.models import Run  # noqa: F401 - the row pages are handed (for annotations)
from db.store import db_url, home, run_dir  # noqa: F401 - the folders pages show

UndoRefused = labelling.UndoRefused  # nothing of the reviewer's to undo, or relabelled since
