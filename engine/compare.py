"""Compare two runs fairly: the same evaluation images, scored against the same labels."""
from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from db import evaluation, labelling, queries
from engine import metrics
from engine.thresholds import default_threshold


def compare_runs(s: Session, run_a: int, run_b: int, *, eval_set: str | None = None) -> dict:
    """Metrics of two runs of one dataset on images both scored and neither trained on.

    Default evaluation images: validation images of both runs whose label is the same in the
    label state each run trained on and now (a corrected image is left out, since one of the
    runs was validated against the other label). With `eval_set`, the frozen set's images
    instead, scored against the current labels. Either way, images either run trained on are
    left out and counted.
    """
    a, b = queries.get_run(s, run_a), queries.get_run(s, run_b)
    if a.dataset_id != b.dataset_id:
        raise ValueError(f"runs {run_a} and {run_b} belong to different datasets")
    ds = a.dataset_id
    # Labels at run a's state, run b's state and now, for the images relabelled since the older
    # of the two (every other image has one label in all three)
    states = labelling.label_states(s, ds, [a.labels_as_of or 0, b.labels_as_of or 0, None])
    changed = {i for i, (la, lb, _) in states.items() if la is not None and lb is not None and la != lb}
    # every read below is limited in the query to the candidate images (a few thousand of a
    # dataset's 100,000: the Runs page's first render pays for this)
    if eval_set is None:
        among = queries.role_images(run_a, "val", among=queries.role_images(run_b, "val"))
        candidates = set(s.scalars(among))
        differ = {i for i in candidates & states.keys() if not (states[i][0] == states[i][1] == states[i][2])}
        basis = "shared validation images with unchanged labels"
    else:
        among = evaluation.eval_set_images(evaluation.get_eval_set(s, ds, eval_set).id)
        candidates = set(s.scalars(among))
        differ = set()
        basis = f"frozen evaluation set {eval_set!r}, current labels"
    was_trained = set(s.scalars(queries.role_images([run_a, run_b], "train", among=among).distinct()))
    now = labelling.current_labels(s, ds, among=among)
    pa = queries.predictions(s, run_a, among=among)
    pb = queries.predictions(s, run_b, among=among)
    ids = sorted(i for i in candidates - differ - was_trained if i in pa and i in pb and i in now)
    out = {"run_a": run_a, "run_b": run_b, "basis": basis, "labels_changed": len(changed),
           "images": len(ids), "excluded_label_changed": len(differ - was_trained),
           "excluded_trained_on": len(was_trained),
           "excluded_unpredicted": len(candidates - differ - was_trained) - len(ids)}
    if len(ids) == 0:
        raise ValueError(f"runs {run_a} and {run_b} have no evaluation images in common ({basis}); "
                         "predict both on the same images or freeze an evaluation set")
    y = np.array([now[i] for i in ids])
    for key, run, probs in (("a", a, pa), ("b", b, pb)):
        p = np.array([probs[i] for i in ids])
        summary = metrics.summary(y, p)
        threshold, _ = default_threshold(run)
        out[key] = {"f1_at_0.5": summary["f1"], "f1_at_run_threshold": metrics.f1_at(y, p, threshold),
                    "run_threshold": threshold, "best_f1": summary["best_f1"], "auc": summary["auc"],
                    "labels_as_of": run.labels_as_of}
    return out
