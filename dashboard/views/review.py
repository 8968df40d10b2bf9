"""Review: a run's predictions, most confidently wrong first, or an audit's likely label errors,
worst first; relabel, note and undo the same way in both."""
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import store, ui
from dashboard.ui import show_image
from engine import metrics
from engine.choices import SPLITS
from engine.thresholds import default_threshold

PAGE_SIZE = 24
COLS = 6
LABELS = {1: "AI-generated", 0: "human-made"}


def filters_ui(run) -> dict:
    qp = st.query_params
    c1, c2, c3 = st.columns([1, 2, 2])
    splits = list(SPLITS)
    split = c1.selectbox("Split", splits, index=splits.index(qp["split"]) if qp.get("split") in splits else 0)
    default_outcomes = [qp["outcome"]] if qp.get("outcome") in metrics.OUTCOMES else list(metrics.OUTCOMES[:2])
    outcomes = c2.multiselect("Outcome", list(metrics.OUTCOMES), default=default_outcomes,
                              disabled=split == "test")
    lo, hi = c3.slider("Probability of AI-generated", 0.0, 1.0, (0.0, 1.0), step=0.01)
    c4, c5 = st.columns([1, 1])
    run_t = float(default_threshold(run)[0])
    try:
        t = float(qp.get("threshold", run_t))
    except ValueError:
        t = run_t
    t = min(1.0, max(0.0, t))
    # the widget keeps the exact threshold (0.99957 stays 0.99957); only its display is rounded
    t = c4.number_input("Threshold", 0.0, 1.0, value=t, step=0.01, format="%.4f",
                        help=f"exact value: {t:.6g}")
    relabelled = c5.selectbox("Relabelled", ["any", "only relabelled", "not relabelled"])
    return {"split": split, "outcomes": outcomes, "range": (lo, hi), "threshold": t, "relabelled": relabelled}


def filtered(df: pd.DataFrame, f: dict) -> pd.DataFrame:
    label = df["label"].to_numpy(dtype=float, na_value=np.nan)
    out = df.assign(outcome=metrics.outcomes(label, df["prob"].to_numpy(), f["threshold"]))
    keep = out["prob"].between(*f["range"]).to_numpy().copy()
    if f["split"] != "test":
        keep &= out["outcome"].isin(f["outcomes"]).to_numpy()
    if f["relabelled"] != "any":
        keep &= (out["reviews"] > 0).to_numpy() == (f["relabelled"] == "only relabelled")
    out = out[keep]
    # most confidently wrong first: distance from the current label; test: most AI-like first
    wrongness = metrics.wrongness(out["label"].to_numpy(dtype=float, na_value=np.nan), out["prob"].to_numpy())
    return out.assign(wrongness=wrongness).sort_values(["wrongness", "image_id"], ascending=[False, True])


def prediction_caption(r) -> str:
    label = "?" if pd.isna(r["label"]) else LABELS[int(r["label"])]
    prob = "no prediction" if pd.isna(r["prob"]) else f"p={r['prob']:.3f}"
    return f"{prob} · {label}" + (" · relabelled" if r["reviews"] else "")


def queue_caption(r) -> str:
    return (f"#{r['rank']} · {LABELS[int(r['label'])]} · p={r['prob']:.3f}"
            + (" · relabelled" if r["reviews"] else ""))


def grid_ui(page: pd.DataFrame, root: str, caption=prediction_caption) -> None:
    rows = [page.iloc[i : i + COLS] for i in range(0, len(page), COLS)]
    sha1s = store.image_sha1s(page["image_id"])  # one query for the page, not one per thumbnail
    for chunk in rows:
        cols = st.columns(COLS)
        for col, (_, r) in zip(cols, chunk.iterrows()):
            with col:
                show_image(root, r["rel_path"], sha1s.get(int(r["image_id"])), 192, caption(r))
                if st.button("Open", key=f"open_{r['image_id']}", width="stretch"):
                    st.session_state["selected_image"] = int(r["image_id"])


def detail_ui(df: pd.DataFrame, root: str, image_id: int, who: str, run_id: int | None) -> None:
    row = df[df["image_id"] == image_id]
    if row.empty:
        return
    r = row.iloc[0]
    if run_id is None:  # an audit's image: explained by the fold run that never saw it
        run_id = int(r["fold_run"])
    st.divider()
    left, right = st.columns([1, 2])
    with left:
        show_image(root, r["rel_path"], store.image_sha1s([image_id]).get(image_id), 512)
    with right:
        st.subheader(r["rel_path"])
        history = store.label_history(image_id)
        # an "unlabel" row (the undo of a test image's first review) leaves no label
        current = history[-1].label if history and history[-1].source != "unlabel" else None
        st.metric("Probability of AI-generated" + (" (out of fold)" if "quality" in r else ""),
                  "none (not predicted by this run)" if pd.isna(r["prob"]) else f"{r['prob']:.4f}")
        if "quality" in r:
            st.write(f"Audit rank **{r['rank']}** · label quality {r['quality']:.4f} · "
                     f"{'flagged' if r['flagged'] else 'not flagged'} · audited label: "
                     f"{LABELS[int(r['given_label'])]}")
        st.write(f"Current label: **{LABELS.get(current, 'none (test image)')}**")
        relabel_ui(image_id, current, who)
        saliency_ui(run_id, r["rel_path"], None if pd.isna(r["prob"]) else float(r["prob"]))
        more_like_this_ui(run_id, image_id, root, who)
        if history:
            st.dataframe(pd.DataFrame([{
                "when": h.created_at, "who": h.author, "source": h.source,
                "old → new": f"{LABELS.get(history[i - 1].label) if i else '—'} → {LABELS[h.label]}",
                "note": h.note or ""} for i, h in enumerate(history)]), hide_index=True)


@st.cache_resource(max_entries=2)
def _model(checkpoint: str, key: str):
    """One model per checkpoint, with a lock: Captum's hooks must not interleave across sessions."""
    import threading

    from engine.model import load_trained

    return load_trained(Path(checkpoint))[0], threading.Lock()


DECODE_NOTE = ("The map is computed here, on the CPU, from the file as Pillow decodes it. A prediction "
               "made on a CUDA GPU decodes JPEGs on the GPU (nvJPEG), whose pixels can differ slightly, so "
               "the probability below can differ a little from the stored one.")


def _article(n: int) -> str:
    """ "an" before a number said with a vowel first (8, 11, 18, 80-89, 800...), else "a"."""
    digits = str(n)
    return "an" if digits.startswith("8") or (len(digits) % 3 == 2 and digits.startswith(("11", "18"))) else "a"


def settings_text(s) -> str:
    """A saliency.Settings as a reader says it: the method and what shapes its map."""
    method = s.method.replace("_", " ")
    if s.method == "integrated_gradients":
        return f"{method}, {s.steps} steps from a {s.baseline} baseline"
    if s.method == "smoothgrad":
        return f"{method}, {s.samples} noisy copies (noise {s.noise:g})"
    if s.method == "occlusion":
        return f"{method}, " + (f"{_article(s.window)} {s.window} px window" if s.window
                                else "a window an eighth of the image wide")
    return method


def saliency_ui(run_id: int, rel_path: str, stored_prob: float | None = None) -> None:
    from engine import saliency

    with st.expander("Why? Saliency map"):
        st.caption(DECODE_NOTE)
        c1, c2, c3 = st.columns(3)
        method = c1.selectbox("Method", saliency.METHODS, key="sal_method")
        opacity = c2.slider("Heatmap opacity", 0.0, 1.0, 0.5, key="sal_opacity")
        steps = c3.number_input("IG steps", 2, 256, 32, key="sal_steps",
                                disabled=method != "integrated_gradients")
        baseline = c3.selectbox("IG baseline", saliency.BASELINES, key="sal_baseline",
                                disabled=method != "integrated_gradients")
        if not st.toggle("Show the map", key=f"sal_show_{run_id}"):
            return
        run = store.runs_by_id()[run_id]
        settings = saliency.Settings(method, steps=int(steps), baseline=baseline)
        try:
            key = saliency.checkpoint_key(Path(run.checkpoint))
            model, lock = _model(run.checkpoint, key)
            with lock, st.spinner(f"Computing {method} (cached after the first time)..."):
                att, _ = store.explain(run_id, rel_path, settings, model)
        except (OSError, ValueError, LookupError) as e:
            st.warning(f"No saliency map: {e}")
            return
        picture, heat, inside = saliency.on_image(att)
        h, w = picture.shape[:2]
        left, right = st.columns([1, 2])
        left.image(saliency.overlay(picture, heat, opacity, inside), caption=f"{method} over the image",
                   width="stretch")
        right.image(np.concatenate([picture, saliency.panels(att, opacity)[:, 2 * w:]], axis=1),
                    caption="the image | attribution", width="stretch")
        seen = ("the whole image, squashed to a square" if inside.all()
                else "the centre square only (the dimmed rest was not seen)")
        mass = saliency.mass_summary(att.map)
        st.caption(f"Shown at {w}x{h}, the image's own aspect ratio; the model saw {seen} at "
                   f"{att.image.shape[1]}x{att.image.shape[0]} px, and the map is resized back onto it.")
        st.caption(f"p(AI) = {att.prob:.4f}"
                   + (f" (stored prediction: {stored_prob:.4f})" if stored_prob is not None else "")
                   + f" · {settings_text(settings)} · centre of mass at {mass.get('center')} (x, y as fractions of what "
                   "the model saw)"
                   + (f" · IG convergence delta {att.delta:.2e}" if att.delta is not None else ""))


def more_like_this_ui(run_id: int, image_id: int, root: str, who: str, k: int = 6) -> None:
    """The image's nearest neighbours in the run's embeddings, with labels and predictions; one
    click labels them all, or opens them in Review."""
    with st.expander("More like this", expanded=True):
        if not store.has_embeddings(run_id):
            st.caption(f"No embeddings for run #{run_id} yet: run `aivh embed --run {run_id}`.")
            return
        _, stale = store.embeddings_source(run_id)
        if stale:
            st.warning(stale)
        dataset_id = store.runs_by_id()[run_id].dataset_id
        try:
            near = store.more_like_this(dataset_id, run_id, image_id, k)
        except LookupError as e:
            st.caption(str(e))
            return
        cols = st.columns(max(1, len(near)))
        sha1s = store.image_sha1s(near["image_id"])
        for col, (_, r) in zip(cols, near.iterrows()):
            with col:
                label = "?" if pd.isna(r["label"]) else LABELS[int(r["label"])]
                prob = "-" if pd.isna(r["prob"]) else f"{r['prob']:.3f}"
                show_image(root, r["rel_path"], sha1s.get(int(r["image_id"])), 160,
                           f"cos {r['similarity']:.3f} · {label} · p={prob}")
        c1, c2, c3 = st.columns(3)
        if c3.button("Open these in Review", key=f"mlt_open_{image_id}"):
            ui.open_in_review([image_id, *near["image_id"]], f"images like #{image_id}", run_id=run_id)
        if not who:
            return
        for col, value in ((c1, 1), (c2, 0)):
            if col.button(f"Label these {len(near)} {LABELS[value]}", key=f"mlt_{value}_{image_id}"):
                n = store.relabel_many(dataset_id, near["image_id"], value, author=who,
                                       note=f"more like image {image_id}")
                st.toast(f"{n} relabelled {LABELS[value]}")
                st.rerun()


def relabel_ui(image_id: int, current: int | None, who: str) -> None:
    if not who:
        st.info("Enter your name in the sidebar to relabel.")
        return
    note = st.text_input("Note (optional)", key=f"note_{image_id}")
    c1, c2, c3 = st.columns(3)
    for col, value in ((c1, 1), (c2, 0)):
        if col.button(f"Label {LABELS[value]}", key=f"relabel_{value}_{image_id}",
                      type="primary" if value != current else "secondary"):
            store.relabel(image_id, value, author=who, note=note or None)
            st.toast(f"Labelled {LABELS[value]}")
            st.rerun()
    if c3.button("Undo last review", key=f"undo_{image_id}"):
        try:
            store.undo(image_id, author=who)
        except store.UndoRefused as e:  # nothing of yours to undo, or someone relabelled it since
            st.warning(str(e))
        else:
            st.toast("Undone: the label before your newest review is back")
            st.rerun()


def paged(view: pd.DataFrame) -> pd.DataFrame:
    pages = max(1, -(-len(view) // PAGE_SIZE))
    page_no = st.number_input(f"Page (of {pages})", 1, pages, value=1, step=1)
    return view.iloc[(page_no - 1) * PAGE_SIZE : page_no * PAGE_SIZE]


def queue_ui(who: str) -> None:
    """The label-error queue of an audit: images whose label most likely is wrong, worst first."""
    found = store.audits()
    done = [a for a in found if a.status == "succeeded"]
    if not done:
        st.info("No finished label audit yet. Run `aivh audit --dataset NAME` (k fold runs + cleanlab).")
        for a in found:
            st.caption(f"audit #{a.id}: {a.status}" + (f" ({a.error})" if a.error else ""))
        return
    ids = [a.id for a in done]
    index = ui.url_index(ids, "audit")
    names = store.dataset_names()
    by_id = {a.id: a for a in done}
    audit_id = st.selectbox("Audit", ids, index=index, format_func=lambda i: (
        f"#{i} {names.get(by_id[i].dataset_id)} · {by_id[i].folds} folds · {by_id[i].flagged} flagged"))
    st.query_params["audit"] = str(audit_id)
    df = store.audit_frame(audit_id)
    c1, c2 = st.columns(2)
    scope = c1.radio("Show", ["flagged only", "all, ranked"], horizontal=True)
    pending = c2.radio("Reviewed", ["any", "not yet reviewed"], horizontal=True)
    view = df[df["flagged"]] if scope == "flagged only" else df
    if pending == "not yet reviewed":
        view = view[view["reviews"] == 0]
    fixed = int(((df["label"] != df["given_label"]) & df["flagged"]).sum())
    st.caption(f"{len(view):,} images in the queue · {int(df['flagged'].sum()):,} flagged of "
               f"{len(df):,} scored · {fixed:,} flagged labels changed since the audit")
    page = paged(view)
    root = store.dataset_root(by_id[audit_id].dataset_id)
    grid_ui(page, root, queue_caption)
    selected = st.session_state.get("selected_image")
    if (selected is None or selected not in set(page["image_id"])) and not page.empty:
        selected = int(page.iloc[0]["image_id"])
    if selected is not None:
        detail_ui(df, root, selected, who, None)


def selection_ui(run, selection: dict, who: str) -> None:
    """Exactly the images another page opened here (a chart's bar, a lasso, a cluster), in its
    order, whatever their split; those the run never predicted show without a probability."""
    df = store.selection_frame(run.dataset_id, run.id, selection["ids"])
    missing = len(selection["ids"]) - len(df)
    c1, c2 = st.columns([4, 1])
    c1.subheader(f"{selection['title']}: {len(df):,} images")
    if c2.button("Back to all predictions", key="clear_selection"):
        ui.clear_review_selection()
        st.rerun()
    if missing:
        st.caption(f"{missing:,} more are not images of run #{run.id}'s dataset")
    if df.empty:
        st.info(f"None of these images belong to run #{run.id}'s dataset.")
        return
    page = paged(df)
    root = store.dataset_root(run.dataset_id)
    grid_ui(page, root)
    selected = st.session_state.get("selected_image")
    if selected not in set(df["image_id"]):
        selected = int(page.iloc[0]["image_id"])
    detail_ui(df, root, selected, who, run.id)


st.title("Review")
who = ui.reviewer()
QUEUES = ["Predictions of a run", "Likely label errors"]
queue = st.radio("Queue", QUEUES, horizontal=True,
                 index=1 if st.query_params.get("queue") == "audit" else 0)
st.query_params["queue"] = "audit" if queue == QUEUES[1] else "run"
runs = store.runs_by_id()
run = ui.pick_run(runs) if queue == QUEUES[0] else None
if queue == QUEUES[1]:
    queue_ui(who)
elif run is not None and (selection := ui.review_selection(run.id)) is not None:
    selection_ui(run, selection, who)
elif run is not None:
    f = filters_ui(run)
    df = store.prediction_frame(run.id, f["split"])
    if df.empty:
        st.info(f"Run #{run.id} has no predictions on the {f['split']} split yet.")
    else:
        view = filtered(df, f)
        reviewed = int((view["reviews"] > 0).sum())
        st.caption(f"{len(view):,} images match · {reviewed:,} of them reviewed")
        page = paged(view)
        root = store.dataset_root(run.dataset_id)
        grid_ui(page, root)
        selected = st.session_state.get("selected_image")
        if selected is None and not page.empty:
            selected = int(page.iloc[0]["image_id"])
        if selected is not None:
            detail_ui(df, root, selected, who, run.id)
