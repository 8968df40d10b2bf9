"""Sweep: launch a hyperparameter sweep (Optuna; its workers are processes of their own),
watch its trials arrive, Optuna's figures, the trials table, the best run opened or exported."""
import streamlit as st

from dashboard import store, ui
from engine.choices import PRUNERS, SWEEP_METRICS
from engine.errors import UsageError


def launch_ui(names: dict[int, str]) -> None:
    with st.expander("New sweep", expanded=not store.sweeps()), st.form("new_sweep"):
        c1, c2, c3 = st.columns(3)
        dataset = c1.selectbox("Dataset", list(names.values()))
        trials = c2.number_input("Trials", 1, 1000, value=12)
        parallel = c3.number_input("Parallel workers (processes)", 1, 16, value=1)
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input("Epochs per trial (at most)", 1, 200, value=4)
        img_size = c2.number_input("Image size (px, 0 = in the space)", 0, 1024, value=64, step=16)
        workers = c3.number_input("Decoding workers per trial", 0, 64, value=0)
        c1, c2 = st.columns(2)
        metric = c1.selectbox("Metric (maximised)", SWEEP_METRICS)
        pruner = c2.selectbox("Pruner", PRUNERS)
        fixed = {"epochs": int(epochs), "workers": int(workers), **({"img_size": int(img_size)} if img_size else {})}
        space = st.text_input("Space (`NAME=LOW:HIGH[:log]` or `NAME=A|B|C`, comma-separated)",
                              value=store.default_space(fixed),
                              help="a name fixed above is not swept: leave it out of the space")
        if st.form_submit_button("Start sweep", type="primary"):
            try:
                sweep_id = store.start_sweep(dataset, int(trials), parallel=int(parallel), space=space,
                                             metric=metric, fixed=fixed, pruner=pruner)
            except (UsageError, ValueError, LookupError) as e:
                st.error(str(e))
            else:
                st.query_params["sweep"] = str(sweep_id)
                st.success(f"Sweep {sweep_id} started with {int(parallel)} worker(s).")


@st.fragment(run_every=3)
def watch_ui(sweep_id: int) -> None:
    r = store.sweep_summary(sweep_id)  # read only
    st.subheader(f"Sweep #{sweep_id} on {r['dataset']}")
    cols = st.columns(6)
    for col, (label, value) in zip(cols, [("Requested", r["trials"]), ("Completed", r["completed"]),
                                          ("Pruned", r["pruned"]), ("Failed", r["failed"]),
                                          ("Running", r["running"]),
                                          ("Epochs run / requested", f"{r['epochs_run']} / {r['epochs_requested']}")]):
        col.metric(label, value)
    st.caption(f"Maximising {r['metric']} · pruner {r['pruner']} · fixed {r['fixed']} · space `{r['space']}`")
    if r["best_run"] is not None:
        st.success(f"Best: run #{r['best_run']}, {r['metric']} {r['best_value']:.4f}, {r['best_params']}")
    figs = store.sweep_figures(sweep_id, r)
    titles = {"history": "Optimisation history", "intermediate": "Intermediate values (pruned trials stop)",
              "parallel": "Parallel coordinates", "importances": "Parameter importances"}
    shown = [k for k in titles if k in figs]
    if shown:
        for tab, key in zip(st.tabs([titles[k] for k in shown]), shown):
            figs[key].update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10})
            if key == "intermediate":  # its steps are epochs
                ui.epoch_axis(figs[key])
            tab.plotly_chart(figs[key], key=f"sweep_{sweep_id}_{key}")
    trials = store.sweep_trials(sweep_id)
    if trials.empty:
        st.info("No trial has started yet: the workers are starting.")
    else:
        st.dataframe(trials, hide_index=True)


def best_ui(r: dict) -> None:
    """Open the best run on Evaluate, or export it, as the sweep stands at this rerun."""
    if r["best_run"] is None:
        return
    c1, c2, _ = st.columns([1, 1, 3])
    if c1.button(f"Open best run (#{r['best_run']})"):
        st.switch_page("views/evaluate.py", query_params={"run": str(r["best_run"])})
    if c2.button(f"Export best run (#{r['best_run']})"):
        st.switch_page("views/export.py", query_params={"run": str(r["best_run"])})


def resume_ui(sweep_id: int, r: dict) -> None:
    """A sweep short of its count with no live worker (they died, or their timeout passed):
    start workers again."""
    if r["completed"] + r["pruned"] >= r["trials"] or r["running"] or r.get("workers_alive"):
        return  # a live worker (importing, between trials) goes on by itself
    if r["worker_gone"]:
        st.warning(f"{r['worker_gone']} trial(s) lost their worker: resuming marks them failed and retries "
                   "their parameters.")
    c1, c2 = st.columns([1, 3])
    parallel = c1.number_input("Workers", 1, 16, value=1, key="resume_workers")
    if c2.button("Resume sweep", help="fail the trials whose worker died, then start workers until the "
                                      "requested count of completed and pruned trials is reached"):
        store.resume_sweep(sweep_id, int(parallel))
        st.toast(f"Sweep {sweep_id}: {int(parallel)} worker(s) started.")


st.title("Sweep")
names = store.dataset_names()
if not names:
    st.info("The store is empty. Import a dataset with `aivh import DATA_DIR` first.")
else:
    launch_ui(names)
    found = store.sweeps()
    if not found:
        st.info("No sweeps yet: start one above, or with `aivh sweep --dataset NAME --trials N`.")
    else:
        ids = [r["sweep"] for r in reversed(found)]
        by_id = {r["sweep"]: r for r in found}
        chosen = st.selectbox("Sweep", ids, index=ui.url_index(ids, "sweep"),
                              format_func=lambda i: f"#{i} {by_id[i]['dataset']} · {by_id[i]['completed']} "
                                                    f"completed, {by_id[i]['pruned']} pruned of {by_id[i]['trials']}")
        st.query_params["sweep"] = str(chosen)
        resume_ui(chosen, by_id[chosen])
        best_ui(by_id[chosen])
        watch_ui(chosen)
