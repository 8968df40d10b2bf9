"""Train: start a run as its own process and watch it live from the store."""
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import store, ui
from engine import metrics
from engine.choices import DECODES, DEVICES, RESIZE_MODES
from engine.config import PRETRAINED_LR, PROBE_DEFAULTS, SCRATCH_LR, TrainConfig
from engine.device import unavailable as device_unavailable
from engine.processes import last_line


def _short(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")  # 1e-3, as the CLI writes it


WEIGHTS = ("none (from scratch)", "imagenet", "a file")


def form_ui(names: dict[int, str], runs: dict) -> None:
    resumable = ui.resumable(runs)
    d = TrainConfig()  # the defaults of `aivh train` too
    # no bounds on the numbers: a value out of range reaches TrainConfig.problems(), which names
    # it (a bounded field would drop it without a word and start with the old value)
    with st.form("new_run"):
        st.subheader("New run")
        c1, c2, c3 = st.columns(3)
        dataset = c1.selectbox("Dataset", list(names), format_func=names.get)
        arch = c2.text_input("Architecture", value=d.arch,
                             help="efficientnet_b3 (torchvision) or any timm model name, e.g. "
                                  "tf_efficientnet_lite0 (ImageNet weights offline)")
        weights = c3.selectbox("Starting weights", WEIGHTS)
        c1, c2, c3 = st.columns(3)
        weights_file = c1.text_input("Weights file (for 'a file')", placeholder="/path/to/weights.pth")
        epochs = c2.number_input("Epochs", value=d.epochs, step=1)
        freeze = c3.number_input("Freeze epochs (head only first)", value=d.freeze_epochs, step=1)
        c1, c2, c3 = st.columns(3)
        img_size = c1.number_input("Image size (px, 0 = the architecture's)", value=0, step=16)
        batch_size = c2.number_input("Batch size", value=d.batch_size, step=1)
        lr = c3.number_input(f"Learning rate (0 = {_short(SCRATCH_LR)} from scratch, {_short(PRETRAINED_LR)} pretrained)",
                             value=0.0, format="%.5f", step=1e-4)
        c1, c2, c3 = st.columns(3)
        device = c1.selectbox("Device", DEVICES, index=DEVICES.index(d.device))
        limit = c2.number_input("Limit images (0 = all)", value=d.limit or 0, step=1)
        workers = c3.number_input("Decoding workers", value=d.workers, step=1)
        c1, c2, _ = st.columns(3)
        resize_mode = c1.selectbox("Resize mode", RESIZE_MODES, index=RESIZE_MODES.index(d.resize_mode))
        decode = c2.selectbox("JPEG decode", DECODES, index=DECODES.index(d.decode))
        if st.form_submit_button("Start training", type="primary"):
            given = {"arch": arch.strip() or d.arch, "pretrained": _pretrained(weights, weights_file),
                     "epochs": int(epochs), "freeze_epochs": int(freeze), "batch_size": int(batch_size),
                     "device": device, "limit": int(limit) or None, "workers": int(workers),
                     "resize_mode": resize_mode, "decode": decode,
                     **({"img_size": int(img_size)} if img_size else {}), **({"lr": float(lr)} if lr else {})}
            start_run(dataset, given)
    probe_ui(names)
    if resumable:
        c1, c2 = st.columns([3, 1])
        chosen = c1.selectbox("Resume a run that died", resumable, format_func=lambda i: f"#{i}")
        if c2.button("Resume"):
            try:  # refused while its process lives, or when it trained with several processes
                store.resume(chosen)
            except (ValueError, FileNotFoundError) as e:
                st.error(f"Run #{chosen} not resumed: {e}")
            else:
                st.query_params["watch"] = str(chosen)
                st.rerun()


def probe_ui(names: dict[int, str]) -> None:
    """A probe with `aivh probe`'s own defaults (the offline pretrained Lite0 at its native size),
    not the training form's: a probe of random weights measures nothing."""
    d = TrainConfig.from_dict({**PROBE_DEFAULTS, "probe": True})
    with st.form("new_probe"):
        st.subheader("New probe")
        st.caption("A first baseline in seconds: the frozen pretrained backbone's features and a logistic "
                   "regression, recorded as a run (`aivh probe`).")
        c1, c2, c3 = st.columns(3)
        dataset = c1.selectbox("Probe dataset", list(names), format_func=names.get, key="probe_dataset")
        arch = c2.text_input("Probe architecture", value=d.arch, key="probe_arch",
                             help="the backbone whose frozen features are fitted (ImageNet Lite0 offline)")
        weights = c3.selectbox("Probe weights", WEIGHTS[1:], key="probe_weights")
        c1, c2, c3 = st.columns(3)
        weights_file = c1.text_input("Probe weights file (for 'a file')", placeholder="/path/to/weights.pth",
                                     key="probe_weights_file")
        img_size = c2.number_input("Probe image size (px, 0 = the architecture's)", value=0, step=16,
                                   key="probe_img_size")
        limit = c3.number_input("Probe limit images (0 = all)", value=0, step=1, key="probe_limit")
        c1, c2, _ = st.columns(3)
        device = c1.selectbox("Probe device", DEVICES, index=DEVICES.index(d.device), key="probe_device")
        workers = c2.number_input("Probe decoding workers", value=d.workers, step=1, key="probe_workers")
        if st.form_submit_button("Start a probe"):
            given = {**PROBE_DEFAULTS, "arch": arch.strip() or d.arch,
                     "pretrained": _pretrained(weights, weights_file), "device": device,
                     "limit": int(limit) or None, "workers": int(workers), "probe": True, "epochs": 1,
                     **({"img_size": int(img_size)} if img_size else {})}
            start_run(dataset, given, probe=True)


def _pretrained(weights: str, weights_file: str) -> str | None:
    return {"imagenet": "imagenet", "a file": weights_file.strip() or "(no file given)"}.get(weights)


def start_run(dataset_id: int, given: dict, *, probe: bool = False) -> None:
    """Check the values as `aivh train` / `aivh probe` would, then start: every problem is said."""
    cfg = TrainConfig.from_dict(given)
    problems = cfg.problems() or [p for p in (device_unavailable(cfg.device),) if p] or store.weights_problems(cfg)
    what = "Probe" if probe else "Run"
    if problems:
        st.error(f"{what} not started: " + "; ".join(problems))
        return
    try:
        run_id = (store.start_probe if probe else store.start_run)(dataset_id, cfg)
    except (ValueError, FileNotFoundError) as e:  # refused before anything was recorded
        st.error(f"{what} not started: {e}")
        return
    st.query_params["watch"] = str(run_id)
    st.toast(f"{what} #{run_id} started.")  # a toast: no box left behind once the run ends


def tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@st.fragment(run_every=2)
def watch_ui(run_id: int, shown: str, names: dict[int, str]) -> None:
    """The watched run, re-read every 2 s; `shown`: its label in the selector above, drawn by the
    last full run of the page. When the run has moved on (started, cancelled, ended), the whole
    page runs again so the selector, and the start confirmation, never contradict this panel."""
    run, epochs = store.run_with_epochs(run_id)  # read only: a dead owner is shown, not written
    if ui.run_label(run, names) != shown:
        st.rerun()  # the app, not just this fragment
    prog, cfg = run.progress or {}, run.config
    st.subheader(f"Run #{run.id}: {ui.status_text(run)}")
    if run.status == "failed":
        st.error(f"Failed: {run.error or 'no error recorded'}")
    elif ui.owner_gone(run):  # shown, not written: the next start, resume, cancel or `aivh runs` records it
        when = "before the run started" if run.status == "queued" else "while running"
        last = last_line(store.run_dir(run_id) / "process.txt")
        said = f"; the last line it wrote: {last}" if last else ""
        st.error(f"Process {run.pid} stopped {when}{said}. The run is marked failed at the next start, "
                 "resume or cancel, or by `aivh runs`.")
    elif run.status == "cancelled":
        st.warning("Cancelled.")
    elif run.status == "pruned":
        st.info(f"Pruned by sweep {cfg.get('sweep')} after epoch {len(epochs)} of {cfg.get('epochs')}: "
                f"its epochs and checkpoints are kept (best epoch {run.best_epoch}).")
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
    eta = metrics.eta_seconds(prog, total)
    if run.status == "running" and eta is not None and not ui.owner_gone(run):
        st.caption(f"{prog['images_per_s']:.1f} images/s · about {eta / 60:.1f} min left")
    if run.status in ui.ACTIVE and st.button("Cancel run", key=f"cancel_{run_id}"):
        store.cancel(run_id)
        st.toast("Cancel requested: the run stops after its current batch.")
    if epochs:
        df = pd.DataFrame([{"epoch": e.epoch, "val F1 (best thr.)": e.val_best_f1, "val AUC": e.val_auc,
                            "train loss": e.train_loss, "val loss": e.val_loss} for e in epochs])
        fig = px.line(df.melt("epoch"), x="epoch", y="value", color="variable", markers=True)
        fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 10, "b": 10})
        ui.epoch_axis(fig)
        st.plotly_chart(fig, key=f"live_{run_id}")
    st.code(tail(store.run_dir(run_id) / "log.txt") or "(no log yet)", language=None)
    crash = tail(store.run_dir(run_id) / "process.txt", 15)
    if crash:
        with st.expander("process output"):
            st.code(crash, language=None)


st.title("Train")
names = store.dataset_names()
if not names:
    st.info("The store is empty. Import a dataset with `aivh import DATA_DIR` first.")
else:
    runs = store.runs_by_id()
    form_ui(names, runs)
    runs = store.runs_by_id()
    if runs:
        ids = list(reversed(runs))
        watched = st.selectbox("Watch run", ids, index=ui.url_index(ids, "watch"),
                               format_func=lambda i: ui.run_label(runs[i], names))
        watch_ui(watched, ui.run_label(runs[watched], names), names)
