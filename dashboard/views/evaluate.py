"""Evaluate: one threshold slider drives the confusion matrix, the metrics and every curve."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import store, ui
from dashboard.sections import robustness_ui, slices_ui
from engine import metrics
from engine.thresholds import default_threshold, fmt_threshold

SPLITS = {"val": "validation (held out by the run)", "test": "test (unlabelled)",
          "train": "training images of the run"}


@st.cache_data(max_entries=16, show_spinner=False)
def sweep_of(y: np.ndarray, p: np.ndarray) -> metrics.Sweep:
    return metrics.sweep(y, p)


def _fig(title: str, x: str, y: str, height: int = 320) -> go.Figure:
    fig = go.Figure()
    # the legend right of the plot, where no axis title or line label is (a horizontal legend
    # goes under the plot, over the x axis' title; above it, over the lines' labels)
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})
    return fig


def threshold_key(run_id: int, default: float) -> str:
    return f"thr_{run_id}_{default!r}"


def threshold_ui(run, default: float) -> float:
    """The widget holds the exact value (a best threshold of 0.99957 stays 0.99957, it is not
    rounded to 1.000); only the slider's display is rounded, the caption shows the value. Keyed
    on the run's default too: a new best epoch's threshold (a run still training) or a saved
    one starts the slider there, not at the value of an earlier render."""
    key = threshold_key(run.id, default)
    asked = st.session_state.pop(f"thr_set_{run.id}", None)  # "Set threshold from target share"
    if asked is not None:
        st.session_state[key] = asked
    elif key not in st.session_state:
        st.session_state[key] = float(default)
    t = st.slider("Threshold (call AI-generated when p ≥ threshold)", 0.0, 1.0, step=0.001,
                  format="%.4f", key=key)
    st.caption(f"Threshold: {fmt_threshold(t)}")
    return t


def provenance_ui(run, split: str, t: float, p_test: np.ndarray | None) -> None:
    """Which checkpoint made these predictions; stale test predictions and degenerate thresholds
    said plainly."""
    made_by, stale = store.provenance(run.id, split)
    st.caption(f"Made by: {made_by}")
    labels = None if p_test is None else [int(v) for v in (p_test >= t)]
    warnings = store.threshold_warnings(run.id, t, labels)
    if run.chosen_threshold is None and run.best_threshold is None:
        st.warning(f"The run has no threshold of its own ({run.threshold_note or 'validation stored none'}): "
                   "the slider starts at 0.5, a guess.")
    if stale:
        st.warning(stale)
    for w in warnings:
        st.warning(w)


def confusion_ui(y, p, t, run_id: int, split: str) -> None:
    (tn, fp), (fn, tp) = metrics.confusion(y, p, t)
    counts = np.array([[tn, fp], [fn, tp]])
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    text = [[f"{counts[i, j]:,}<br>{rates[i, j]:.1%} of row" for j in range(2)] for i in range(2)]
    fig = go.Figure(go.Heatmap(z=rates, x=["called human", "called AI"], y=["human (0)", "AI (1)"],
                               text=text, texttemplate="%{text}", colorscale="Blues", showscale=False))
    fig.update_layout(title="Confusion matrix", height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis={"autorange": "reversed"})
    st.plotly_chart(fig, key="confusion")
    st.caption("Open the images of a cell in Review:")
    cells = st.columns(4)
    for col, (name, n) in zip(cells, (("false positive", fp), ("false negative", fn),
                                      ("true positive", tp), ("true negative", tn))):
        if col.button(f"{name}s ({n:,})", key=f"open_{name}"):
            ui.clear_review_selection()  # Review shows this cell, not an earlier selection
            st.switch_page("views/review.py", query_params={
                "run": str(run_id), "split": split, "outcome": name, "threshold": repr(float(t))})


def metrics_ui(y, p, t) -> None:
    precision, recall = metrics.precision_recall(y, p, t)
    best_t, best_f1 = metrics.best_threshold(y, p)
    cols = st.columns(5)
    cols[0].metric("F1", f"{metrics.f1_at(y, p, t):.4f}")
    cols[1].metric("Precision", f"{precision:.4f}")
    cols[2].metric("Recall", f"{recall:.4f}")
    cols[3].metric("Called AI", f"{(p >= t).mean():.1%}")
    cols[4].metric("Best F1", f"{best_f1:.4f}", help=f"at threshold {fmt_threshold(best_t)}")


def curves_ui(y, p, t) -> None:
    s = sweep_of(y, p)
    best_t, _ = metrics.best_threshold(y, p)
    fig = _fig("F1, precision and recall by threshold", "threshold", "")
    for name, values in (("F1", s.f1), ("precision", s.precision), ("recall", s.recall)):
        fig.add_scatter(x=s.thresholds, y=values, name=name, mode="lines")
    fig.add_vline(x=best_t, line_dash="dot", annotation_text=f"best F1 {best_t:.3f}")
    fig.add_vline(x=t, line_color="red", annotation_text=f"current {t:.3f}", annotation_position="bottom")
    st.plotly_chart(fig, key="thr_curve")
    left, right = st.columns(2)
    roc = _fig(f"ROC (AUC {metrics.roc_auc(y, p):.4f})", "false positive rate", "true positive rate")
    roc.add_scatter(x=np.r_[0, s.fpr], y=np.r_[0, s.recall], mode="lines", name="ROC")
    k = int(np.searchsorted(-s.thresholds, -t, side="right")) - 1
    if k >= 0:
        roc.add_scatter(x=[s.fpr[k]], y=[s.recall[k]], mode="markers", name="current",
                        marker={"color": "red", "size": 10})
    left.plotly_chart(roc, key="roc")
    pr = _fig(f"Precision-recall (AP {metrics.average_precision(y, p):.4f})", "recall", "precision")
    pr.add_scatter(x=s.recall, y=s.precision, mode="lines", name="PR")
    right.plotly_chart(pr, key="pr")
    left, right = st.columns(2)
    hist = _fig("Scores by true class", "probability of AI-generated", "images")
    for cls, name in ((0, "human (0)"), (1, "AI (1)")):
        hist.add_histogram(x=p[y == cls], name=name, opacity=0.6, xbins={"start": 0, "end": 1, "size": 0.02})
    hist.update_layout(barmode="overlay")
    hist.add_vline(x=t, line_color="red")
    left.plotly_chart(hist, key="hist")
    mean_p, frac, count = metrics.reliability(y, p)
    rel = _fig("Reliability", "mean predicted probability", "share actually AI")
    rel.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot"})
    rel.add_scatter(x=mean_p, y=frac, mode="lines+markers", name="model", text=[f"{c} images" for c in count])
    right.plotly_chart(rel, key="reliability")


def test_rate_ui(p, t, run) -> None:
    """The test set is shifted: show how much each threshold calls AI, and set t by a rate."""
    # a count, not a change: no delta (st.metric draws one as an arrow going up or down)
    st.metric("Test images called AI at this threshold",
              f"{(p >= t).sum():,} of {p.size:,} ({(p >= t).mean():.1%})")
    grid, share = metrics.called_rate_curve(p)
    fig = _fig("Share of test images called AI by threshold", "threshold", "share called AI")
    fig.add_scatter(x=grid, y=share, mode="lines", name="called AI")
    fig.add_vline(x=t, line_color="red", annotation_text=f"current {t:.3f}")
    st.plotly_chart(fig, key="rate_curve")
    rate = st.number_input("Target share called AI (%)", 0.0, 100.0, value=50.0, step=1.0)
    st.button("Set threshold from target share", on_click=_set_threshold,
              args=(run.id, metrics.threshold_for_rate(p, rate / 100)))


def _set_threshold(run_id: int, value: float) -> None:
    """Kept apart from the slider's key, which names the run's default: a new best epoch between
    the render and the click does not lose the value."""
    st.session_state[f"thr_set_{run_id}"] = float(value)


def save_ui(run, t: float) -> None:
    current = run.chosen_threshold
    label = f"Save {fmt_threshold(t)} as the run's threshold" + (
        f" (now {fmt_threshold(current)})" if current is not None else "")
    if st.button(label, type="primary"):
        store.save_threshold(run.id, t)
        st.success(f"Run #{run.id} now exports at threshold {fmt_threshold(t)} by default.")


st.title("Evaluate")
runs = store.runs_by_id()
run = ui.pick_run(runs)
if run is not None:
    split = st.radio("Split", list(SPLITS), format_func=SPLITS.get, horizontal=True,
                     index=list(SPLITS).index(st.query_params.get("split", "val"))
                     if st.query_params.get("split") in SPLITS else 0)
    df = store.prediction_frame(run.id, split)
    if df.empty:
        st.info(f"Run #{run.id} has no predictions on the {split} split yet. "
                f"Run `aivh predict --run {run.id} --split {split}`.")
    else:
        default = float(default_threshold(run)[0])
        t = threshold_ui(run, default)
        p = df["prob"].to_numpy()
        labelled = df["label"].notna().to_numpy()
        provenance_ui(run, split, t, p if split == "test" else None)
        if split == "test" or not labelled.any():
            test_rate_ui(p, t, run)
        else:
            y = df["label"].to_numpy(dtype=float, na_value=np.nan)[labelled].astype(int)
            p = p[labelled]
            metrics_ui(y, p, t)
            confusion_ui(y, p, t, run.id, split)
            curves_ui(y, p, t)
        save_ui(run, t)
        # computed only when asked for: on a large store the slices cost more than the rest of the page
        if st.toggle("Results per slice and robustness (as on the Shift page)", key="eval_sections"):
            with st.container(border=True):
                slices_ui(run.id, t, key="eval_slices")
                robustness_ui(run.id, key="eval_robustness")
        st.caption(f"{len(df):,} predictions · {pd.Series(labelled).sum():,} labelled")
