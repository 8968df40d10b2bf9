"""Duplicates: exact and near copies side by side (train-train, train-val leaks, train-test, label
conflicts), with labels and the run's predictions; relabel either side, or open a cluster in Review."""
import pandas as pd
import streamlit as st

from dashboard import store, ui
from dashboard.ui import show_image

PAIRS_PER_PAGE = 10
LABELS = {1: "AI-generated", 0: "human-made"}


def side_ui(root: str, r, who: str, key: str) -> None:
    label = None if pd.isna(r["label"]) else int(r["label"])
    prob = "no prediction" if pd.isna(r["prob"]) else f"p(AI)={r['prob']:.3f}"
    show_image(root, r["rel_path"], store.image_sha1s([int(r["image_id"])]).get(int(r["image_id"])), 192)
    st.caption(f"{r['rel_path']} · {r['role']}")
    st.write(f"**{LABELS.get(label, 'unlabelled (test)')}** · {prob}")
    if who and r["split"] == "train":
        c1, c2 = st.columns(2)
        for col, value in ((c1, 1), (c2, 0)):
            if col.button(LABELS[value], key=f"dup_{key}_{value}", disabled=label == value,
                          width="stretch"):
                store.relabel(int(r["image_id"]), value, author=who, note="from Duplicates")
                st.toast(f"{r['rel_path']} labelled {LABELS[value]}")
                st.rerun()


st.title("Duplicates")
who = ui.reviewer()
names = store.dataset_names()
if not names:
    st.info("No dataset yet: `aivh import DATA_DIR`.")
    st.stop()
ds_ids = list(names)
dataset_id = st.selectbox("Dataset", ds_ids, index=ui.url_index(ds_ids, "dataset"), format_func=names.get)
st.query_params["dataset"] = str(dataset_id)
runs = [r for r in store.runs_by_id().values() if r.dataset_id == dataset_id and store.has_embeddings(r.id)]
run_ids = [None, *[r.id for r in reversed(runs)]]
run_id = st.selectbox("Embeddings of run (near copies by features, train-val leaks)", run_ids,
                      index=ui.url_index(run_ids, "run"), format_func=lambda i: "none: hashes only" if i is None else f"#{i}")
if run_id is not None:
    st.query_params["run"] = str(run_id)
    _, stale = store.embeddings_source(run_id)
    if stale:
        st.warning(stale)
missing = store.unhashed(dataset_id)
if missing:
    st.info(f"{missing:,} images have no perceptual hash yet (computed once, then stored).")
    if st.button(f"Hash {missing:,} images", type="primary"):
        with st.spinner("Hashing..."):
            store.hash_images(dataset_id)
        st.rerun()
    st.stop()
report = store.duplicates(dataset_id, run_id)
counts = report["counts"]
cols = st.columns(len(counts))
for col, (kind, n) in zip(cols, counts.items()):
    col.metric(kind, f"{n:,}")
thresholds = report["thresholds"]
if run_id is None:
    by_embedding = ""
elif thresholds["embedding_max_distance"] is None:
    by_embedding = ", no pairs by embedding"
elif thresholds["embedding_ratio"] is None:
    by_embedding = f", embedding cosine at least {thresholds['min_cosine']} alone"
else:
    dim = thresholds["embedding_dimension"]
    how = ("given" if thresholds["embedding_ratio_source"] == "given" else "the loosest allowed" if dim is None
           else f"set for embeddings of intrinsic dimension about {dim:.1f}")
    by_embedding = (f", embedding cosine at least {thresholds['min_cosine']} and a distance under "
                    f"{thresholds['embedding_ratio']:.2g} of both images' distance to their "
                    f"{ui.ordinal(thresholds['embedding_rank'])} nearest other image ({how})")
st.caption(f"{len(report['pairs']):,} pairs in {report['clusters']:,} clusters of {report['images']:,} images · "
           f"perceptual hash within {thresholds['phash_max_bits']} bits" + by_embedding)
for note in report["notes"]:
    st.info(note[0].upper() + note[1:])
for warning in report["warnings"]:
    st.warning(warning[0].upper() + warning[1:])
if report["embedding_left_out"]:
    left, shown = thresholds["embedding_left_out"], len(report["embedding_left_out"])
    some = f", the {shown} nearest to the rule shown" if left > shown else ""
    with st.expander(f"Pairs by embedding left out ({left:,}{some})"):
        st.caption("Within the embedding cosine, but not under the ratio: `aivh duplicates --embedding-ratio R` "
                   "keeps those whose ratio is under R.")
        st.dataframe(pd.DataFrame(report["embedding_left_out"])[["a", "b", "distance", "ratio"]],
                     hide_index=True, width="stretch")
if not report["pairs"]:
    st.success("No exact or near copies found.")
    st.stop()
kinds = st.multiselect("Kinds", list(counts), default=[k for k, n in counts.items() if n])
pairs = [p for p in report["pairs"] if p["kind"] in kinds]
frame = store.image_frame(dataset_id, run_id).set_index("image_id")
root = store.dataset_root(dataset_id)
pages = max(1, -(-len(pairs) // PAIRS_PER_PAGE))
page_no = st.number_input(f"Page (of {pages})", 1, pages, value=1, step=1)
for p in pairs[(page_no - 1) * PAIRS_PER_PAGE: page_no * PAIRS_PER_PAGE]:
    st.divider()
    head, button = st.columns([4, 1])
    head.write(f"**{p['kind']}** · {p['match']} · distance {p['distance']:g} · cluster {p['cluster']}")
    if button.button("Open cluster in Review", key=f"dup_open_{p['a_id']}_{p['b_id']}"):
        members = {q["a_id"] for q in report["pairs"] if q["cluster"] == p["cluster"]}
        members |= {q["b_id"] for q in report["pairs"] if q["cluster"] == p["cluster"]}
        ui.open_in_review(members, f"cluster {p['cluster']} of copies", run_id=run_id)
    left, right = st.columns(2)
    for col, side in ((left, "a"), (right, "b")):
        with col:
            image_id = p[f"{side}_id"]
            side_ui(root, frame.loc[image_id].to_dict() | {"image_id": image_id}, who,
                    f"{p['a_id']}_{p['b_id']}_{side}")
