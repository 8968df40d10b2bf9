"""Runs: datasets and runs, per-epoch curves, several runs compared on one chart and table."""
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import store, ui

CURVES = {"val_best_f1": "validation F1 (best threshold)", "val_f1": "validation F1 @ 0.5",
          "val_auc": "validation ROC AUC", "train_loss": "training loss", "val_loss": "validation loss",
          "lr": "learning rate", "images_per_s": "images / s"}


def datasets_ui() -> bool:
    rows = store.dataset_counts()
    if not rows:
        st.info("The store is empty. Import a Kaggle-layout folder with `aivh import DATA_DIR` "
                "or run `aivh demo`.")
        return False
    st.subheader("Datasets")
    st.dataframe(pd.DataFrame(rows, columns=["dataset", "root", "train images", "test images", "runs"]),
                 hide_index=True)
    return True


def runs_table(runs: dict) -> pd.DataFrame:
    names = store.dataset_names()
    epochs = store.epochs_for_runs(list(runs))
    best = store.best_epochs(runs)
    rows = []
    for r in runs.values():
        b = best.get(r.id)
        cfg = r.config
        rows.append({"run": r.id, "dataset": names.get(r.dataset_id), "kind": r.kind, "sweep": cfg.get("sweep"),
                     "status": ui.status_text(r), "like run": r.like_run_id,
                     "epochs": f"{sum(e.run_id == r.id for e in epochs)}/{cfg.get('epochs')}",
                     "arch": cfg.get("arch", "efficientnet_b3"),
                     "weights": cfg.get("weights_source") or ("none" if cfg.get("pretrained") is None
                                                              else cfg["pretrained"]),
                     "img size": cfg.get("img_size"), "batch": cfg.get("batch_size"), "lr": cfg.get("lr"),
                     "labels as of": r.labels_as_of, "best epoch": r.best_epoch,
                     "val F1 (best thr.)": b.val_best_f1 if b else None,
                     "best thr.": r.best_threshold, "val AUC": b.val_auc if b else None,
                     "chosen thr.": r.chosen_threshold, "processes": r.world_size,
                     "threshold note": r.threshold_note or "", "error": r.error or ""})
    return pd.DataFrame(rows)


def curves_ui(run_ids: list[int]) -> None:
    epochs = store.epochs_for_runs(run_ids)
    if not epochs:
        st.info("The selected runs have no finished epoch yet.")
        return
    df = pd.DataFrame([{**{k: getattr(e, k) for k in ("run_id", "epoch", *CURVES)}} for e in epochs])
    df["run"] = "#" + df["run_id"].astype(str)
    cols = st.columns(2)
    for i, (key, title) in enumerate(CURVES.items()):
        fig = px.line(df, x="epoch", y=key, color="run", markers=True, title=title)
        fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10})
        ui.epoch_axis(fig, int(df["epoch"].max()))
        cols[i % 2].plotly_chart(fig, key=f"curve_{key}")


def retrain_ui(runs: dict) -> None:
    """Retrain with current labels: the chosen run's config, the labels as they are now."""
    done = [r.id for r in reversed(runs.values()) if r.status in ("succeeded", "pruned")]
    if not done:
        return
    st.subheader("Retrain with current labels")
    names = store.dataset_names()
    c1, c2 = st.columns([2, 1])
    run_id = c1.selectbox("Config of run", done, key="retrain_like",
                          format_func=lambda i: ui.run_label(runs[i], names))
    changed = store.labels_changed(runs[run_id].dataset_id, runs[run_id].labels_as_of, None)
    c2.metric("Labels changed since it trained", f"{changed:,}")
    if st.button("Retrain with current labels", type="primary", key="retrain_go"):
        try:
            new_id = store.retrain(run_id)
        except ValueError as e:
            st.error(f"Not started: {e}")
        else:
            st.success(f"Run #{new_id} started with run #{run_id}'s config; watch it on the Train page.")


def fair_compare_ui(runs: dict) -> None:
    """Two runs on the same evaluation images, scored against the same labels."""
    usable = [r.id for r in reversed(runs.values()) if r.checkpoint]
    if len(usable) < 2:
        return
    st.subheader("Compare two runs on the same images")
    names = store.dataset_names()
    c1, c2, c3 = st.columns(3)
    a = c1.selectbox("Run A (before)", usable, index=1, key="fair_a",
                     format_func=lambda i: ui.run_label(runs[i], names))
    b = c2.selectbox("Run B (after)", usable, index=0, key="fair_b",
                     format_func=lambda i: ui.run_label(runs[i], names))
    sets = store.eval_set_names(runs[a].dataset_id)
    basis = c3.selectbox("Evaluate on", ["shared validation images, unchanged labels", *sets], key="fair_basis")
    try:
        r = store.compare_runs(a, b, eval_set=None if basis not in sets else basis)
    except (ValueError, LookupError) as e:
        st.warning(str(e))
        return
    st.caption(f"{r['labels_changed']:,} labels changed between run #{a} and run #{b}. "
               f"{r['images']:,} evaluation images ({r['basis']}); left out: "
               f"{r['excluded_label_changed']:,} relabelled, {r['excluded_trained_on']:,} trained on, "
               f"{r['excluded_unpredicted']:,} without a prediction from both.")
    metric_names = {"f1_at_0.5": "F1 @ 0.5", "f1_at_run_threshold": "F1 @ run's threshold",
                    "best_f1": "best F1", "auc": "ROC AUC"}
    table = pd.DataFrame([{"metric": label, f"run #{a}": r["a"][k], f"run #{b}": r["b"][k],
                           "change": r["b"][k] - r["a"][k]} for k, label in metric_names.items()])
    st.dataframe(table, hide_index=True)
    with st.form("freeze"):
        name = st.text_input("Freeze run A's validation images as an evaluation set named")
        if st.form_submit_button("Freeze") and name.strip():
            try:
                count = store.freeze_validation(a, name.strip(), author=st.query_params.get("reviewer"))
                st.success(f"Froze {count:,} images as {name.strip()!r}.")
            except ValueError as e:
                st.warning(str(e))


st.title("Runs")
ui.workspace_caption()
if datasets_ui():
    runs = store.runs_by_id()
    if not runs:
        st.info("No runs yet. Start one on the Train page or with `aivh train --dataset NAME`.")
    else:
        st.subheader("Runs")
        table = runs_table(runs)
        st.dataframe(table, hide_index=True)
        for r in runs.values():
            if r.status == "failed":
                st.error(f"Run #{r.id} failed: {r.error or 'no error recorded'}")
            elif ui.owner_gone(r):
                st.warning(f"Run #{r.id} is {r.status} but its process is gone: it will be marked failed "
                           "at the next start, resume or cancel (or `aivh runs`).")
        st.subheader("Compare")
        default = [max(runs)]
        chosen = st.multiselect("Runs to compare", list(reversed(runs)), default=default,
                                format_func=lambda i: ui.run_label(runs[i], store.dataset_names()))
        if chosen:
            st.dataframe(table[table["run"].isin(chosen)], hide_index=True)
            curves_ui(chosen)
        fair_compare_ui(runs)
        retrain_ui(runs)
