"""Train: start a run as its own process and watch it live from the store."""
import os
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import common
from db import queries
from db.store import run_dir
from engine import jobs, liveness
from engine.config import TrainConfig

ACTIVE = ("queued", "running")


def form_ui(names: dict[int, str], runs: dict) -> None:
    resumable = [r.id for r in runs.values() if r.status in ("failed", "cancelled")
                 and (run_dir(r.id) / "last.pt").is_file()]
    with st.form("new_run"):
        st.subheader("New run")
        c1, c2, c3 = st.columns(3)
        dataset = c1.selectbox("Dataset", list(names), format_func=names.get)
        epochs = c2.number_input("Epochs", 1, 200, value=12)
        img_size = c3.number_input("Image size (px)", 16, 1024, value=300, step=16)
        c1, c2, c3 = st.columns(3)
        batch_size = c1.number_input("Batch size", 1, 1024, value=32)
        lr = c2.number_input("Learning rate", 1e-6, 1.0, value=1e-3, format="%.5f", step=1e-4)
        device = c3.selectbox("Device", ["auto", "cpu", "cuda"])
        c1, c2, c3 = st.columns(3)
        limit = c1.number_input("Limit images (0 = all)", 0, 10_000_000, value=0)
        pretrained = c2.text_input("Pretrained weights file (optional)", placeholder="/path/to/b3.pth")
        workers = c3.number_input("Decoding workers", 0, 64, value=min(4, os.cpu_count() or 1))
        if st.form_submit_button("Start training", type="primary"):
            start_run(dataset, TrainConfig(
                epochs=int(epochs), img_size=int(img_size), batch_size=int(batch_size), lr=float(lr),
                device=device, limit=int(limit) or None, pretrained=pretrained.strip() or None,
                workers=int(workers)))
    if resumable:
        c1, c2 = st.columns([3, 1])
        chosen = c1.selectbox("Resume a run that died", resumable, format_func=lambda i: f"#{i}")
        if c2.button("Resume"):
            try:  # refused while its process lives, or when it trained with several processes
                jobs.launch(chosen, resume=True, sessions=common.sessions())
            except (ValueError, FileNotFoundError) as e:
                st.error(f"Run #{chosen} not resumed: {e}")
            else:
                st.query_params["watch"] = str(chosen)
                st.rerun()


def start_run(dataset_id: int, cfg: TrainConfig) -> None:
    problems = cfg.problems()  # the same check as `aivh train`
    if problems:
        st.error("Not started: " + "; ".join(problems))
        return
    with common.sessions().begin() as s:
        ds = next(d for d in queries.list_datasets(s) if d.id == dataset_id)
        run_id = jobs.create_run(s, ds, cfg).id
    jobs.launch(run_id, sessions=common.sessions())
    st.query_params["watch"] = str(run_id)
    st.success(f"Run #{run_id} started.")


def tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@st.fragment(run_every=2)
def watch_ui(run_id: int) -> None:
    with common.sessions().begin() as s:
        liveness.reap_stale(s)
        run = queries.get_run(s, run_id)
        epochs = queries.epochs(s, run_id)
    prog, cfg = run.progress or {}, run.config
    st.subheader(f"Run #{run.id}: {run.status}")
    if run.status == "failed":
        st.error(f"Failed: {run.error or 'no error recorded'}")
    elif run.status == "cancelled":
        st.warning("Cancelled.")
    elif run.status == "succeeded":
        threshold = f"threshold {run.best_threshold:.4g}" if run.best_threshold is not None else "no threshold"
        st.success(f"Finished: best epoch {run.best_epoch}, {threshold}" if run.best_epoch else "Finished.")
    if run.threshold_note:
        st.warning(f"Threshold: {run.threshold_note}")
    epoch, total = prog.get("epoch", 0), cfg.get("epochs", 1)
    st.progress(min(1.0, len(epochs) / total), text=f"epoch {epoch or '-'} of {total}")
    if prog.get("batches"):
        st.progress(min(1.0, prog["batch"] / prog["batches"]),
                    text=f"{prog.get('phase', 'train')} batch {prog['batch']} of {prog['batches']}")
    ips = prog.get("images_per_s")
    if run.status == "running" and ips:
        left = (total - max(epoch, 1)) * prog.get("train_images", 0)
        left += (prog["batches"] - prog["batch"]) * prog.get("batch_size", 32)
        st.caption(f"{ips:.1f} images/s · about {left / ips / 60:.1f} min left")
    if run.status in ACTIVE and st.button("Cancel run", key=f"cancel_{run_id}"):
        with common.sessions().begin() as s:
            jobs.request_cancel(s, run_id)
        st.toast("Cancel requested: the run stops after its current batch.")
    if epochs:
        df = pd.DataFrame([{"epoch": e.epoch, "val F1 (best thr.)": e.val_best_f1, "val AUC": e.val_auc,
                            "train loss": e.train_loss, "val loss": e.val_loss} for e in epochs])
        fig = px.line(df.melt("epoch"), x="epoch", y="value", color="variable", markers=True)
        fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 10, "b": 10})
        st.plotly_chart(fig, key=f"live_{run_id}")
    st.code(tail(run_dir(run_id) / "log.txt") or "(no log yet)", language=None)
    crash = tail(run_dir(run_id) / "process.txt", 15)
    if crash:
        with st.expander("process output"):
            st.code(crash, language=None)


st.title("Train")
names = common.dataset_names()
if not names:
    st.info("The store is empty. Import a dataset with `aivh import DATA_DIR` first.")
else:
    runs = common.runs_by_id()
    form_ui(names, runs)
    runs = common.runs_by_id()
    if runs:
        ids = list(reversed(runs))
        wanted = st.query_params.get("watch")
        index = ids.index(int(wanted)) if wanted and wanted.isdigit() and int(wanted) in ids else 0
        watched = st.selectbox("Watch run", ids, index=index,
                               format_func=lambda i: common.run_label(runs[i], names))
        watch_ui(watched)
