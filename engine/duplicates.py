"""Exact and near copies: `aivh duplicates`, and the groups a split or the audit's folds keep
on one side.

Three ways two images are copies, strongest first:
  exact      the same bytes (sha1, recorded at import)
  phash      perceptual hashes (imagehash.phash, 64 bits of the 32x32 DCT) within PHASH_MAX bits:
             survives re-encoding and resizing; hashed in worker processes, stored at first use
  embedding  cosine similarity of the run's pooled features of at least COSINE_MIN, and far nearer
             than either image's 32nd nearest other image, by a ratio set from the embeddings'
             intrinsic dimension; none when the run's embeddings do not separate images (with
             --run; engine/neighbours.py: copy_pairs). The pairs within COSINE_MIN that ratio
             left out are listed (`embedding_left_out`, the first LEFT_OUT_SHOWN), less those
             already joined by an exact or hash copy
Pairs are joined into clusters (scipy's connected components) and each pair gets one kind:
label-conflict (an exact or phash copy whose current labels differ), train-val (a leak: one
side trained, the other validated, with --run), train-train, train-test, test-test. Hash pairs
come from faiss's binary index: every pair within the threshold, not only the nearest few. A
cluster holding more than GIANT_SHARE of the images is said in `warnings`: copies come in small
groups, so such a cluster means the thresholds link unrelated images.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from engine import embeddings
from engine.choices import GROUPINGS
from engine.neighbours import COSINE_MIN, LEFT_OUT_SHOWN, copy_pairs

log = logging.getLogger("aivh.duplicates")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines on which CPU build loaded

# chosen on planted copies in cifake-mini (docs/benchmarks.md, "Neighbours"): planted re-encoded
# and resized copies of 32x32 images reach 6 bits of 64; unrelated pairs start at 8
PHASH_MAX = 6
# imagehash.phash sets a bit per DCT coefficient above their median: an image with detail has
# exactly 32 of 64 set (every one of 3,000 cifake-mini images); a flat or smooth one ties at the
# median and sets fewer (a flat colour or a plain gradient: 1). Such hashes are nearly all alike,
# so they would join every smooth image into one cluster: they link no near copies (sha1 still does)
MIN_DETAIL_BITS = 24
FAILED = ""  # stored for an image that could not be hashed: not retried until re-import changes it
MATCHES = ("exact", "phash", "embedding")
KINDS = ("label-conflict", "train-val", "train-train", "train-test", "test-test")
GIANT_SHARE = 0.5  # a cluster of more than this share of the images is not a group of copies


# ---------------------------------------------------------------- perceptual hashes

def _phash_one(job: tuple[str, str, tuple | None]) -> str | None:
    """One image's perceptual hash (16 hex digits), None when it cannot be decoded or is not the
    file import recorded (size, modification time). Runs in a worker process: top-level and light."""
    import imagehash

    from engine.images import check_unchanged, load_rgb, resolve_inside

    root, rel_path, stamp = job
    try:
        path = resolve_inside(Path(root), rel_path)
        if stamp is not None:
            check_unchanged(path, *stamp)
        im = load_rgb(path, 64)  # JPEG draft: no full decode of big files
        return str(imagehash.phash(im))
    except (OSError, ValueError, PermissionError) as e:
        log.warning("no perceptual hash for %s: %s", rel_path, e)
        return None


def _pool(workers: int):
    """Worker processes (fork) from a single-threaded process such as the CLI. From one with
    threads (the dashboard's server, a training run with its heartbeat) a fork could copy a lock
    another thread holds, and forkserver/spawn re-import the parent's main module (pytest's, the
    server's), so threads there: decoding and the DCT release the GIL, and on 1,000 64x48 JPEGs
    2 threads took 0.34 s, 2 processes 0.31 s, one 0.62 s (2-core EPYC, contended)."""
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if "fork" in mp.get_all_start_methods() and threading.active_count() == 1:
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
    return ThreadPoolExecutor(workers)


def hash_images(root: Path, todo: list[tuple[int, str]], *, processes: int | None = None,
                progress: bool = True, stamps: dict | None = None) -> dict[int, str]:
    """image id -> perceptual hash for `todo` (id, rel_path), hashed by worker processes (threads
    in a threaded process: _pool) in chunks, with a progress bar; an image that fails to decode,
    or whose file is not the one import recorded (stamps: rel_path -> (bytes, mtime_ns)), gets
    FAILED."""
    from tqdm import tqdm

    if not todo:
        return {}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = processes or max(1, min(cpus, 16))
    jobs = [(str(root), p, (stamps or {}).get(p)) for _, p in todo]
    out: dict[int, str] = {}
    if processes == 1 or len(todo) < 200:
        results, pool = map(_phash_one, jobs), None
    else:
        pool = _pool(processes)  # before the bar: tqdm's monitor is a thread
        results = pool.map(_phash_one, jobs, chunksize=max(16, min(512, len(jobs) // (processes * 8))))
    bar = tqdm(total=len(todo), desc="perceptual hashes", unit="img", disable=not progress, mininterval=0.5)
    try:
        for (i, _), h in zip(todo, results):
            out[i] = FAILED if h is None else h
            bar.update(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return out


def ensure_phashes(s, dataset_id: int, root: Path, *, progress: bool = True) -> dict[int, str]:
    """Every readable image's perceptual hash (id -> hex): the stored ones, and the missing ones
    hashed now and written in the caller's transaction (stored at first use, reused after)."""
    from db import queries

    known = queries.phashes(s, dataset_id, failed=True)
    todo = [(i, p) for i, p in queries.image_paths(s, dataset_id) if i not in known]
    if todo:
        fresh = hash_images(root, todo, progress=progress, stamps=queries.image_stamps(s, dataset_id))
        queries.set_phashes(s, fresh)
        known.update(fresh)
        failed = sum(h == FAILED for h in fresh.values())
        if failed:
            log.warning("%d images could not be hashed (see the lines above); they are not retried "
                        "until a re-import finds them changed", failed)
    return {i: h for i, h in known.items() if h != FAILED}


def _bits(hexes: list[str]) -> np.ndarray:
    """(N, 8) uint8: the 64-bit hashes as faiss binary vectors."""
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(len(hexes), 8).copy()


def phash_pairs(hexes: list[str], max_bits: int = PHASH_MAX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, Hamming distance) of every pair of hashes within max_bits, i < j (faiss binary range
    search: exact, every pair, not only the nearest few). A hash with fewer than MIN_DETAIL_BITS
    set (a flat or smooth image) is in no pair."""
    import faiss

    empty = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    if len(hexes) < 2:
        return empty
    x = _bits(hexes)
    detailed = np.flatnonzero(np.unpackbits(x, axis=1).sum(axis=1) >= MIN_DETAIL_BITS)
    if len(detailed) < 2:
        return empty
    x = np.ascontiguousarray(x[detailed])
    index = faiss.IndexBinaryFlat(64)
    index.add(x)
    lims, dist, nbr = index.range_search(x, max_bits + 1)  # strict: distances < radius
    rows = np.repeat(np.arange(len(x)), np.diff(lims).astype(np.int64))
    keep = rows < nbr
    return detailed[rows[keep]], detailed[nbr[keep].astype(np.int64)], dist[keep].astype(np.int64)


# ---------------------------------------------------------------- clusters and kinds

def clusters(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cluster label of each of n items joined by the edges (a, b) (scipy connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _exact_pairs(sha1: list[str | None], cap: int = 20) -> list[tuple[int, int]]:
    """Positions of byte-identical images: every pair of a small group, a star in a big one."""
    by: dict[str, list[int]] = {}
    for pos, h in enumerate(sha1):
        if h:
            by.setdefault(h, []).append(pos)
    out = []
    for members in by.values():
        if len(members) <= cap:
            out += [(x, y) for i, x in enumerate(members) for y in members[i + 1:]]
        else:
            out += [(members[0], y) for y in members[1:]]
    return out


def pair_kind(split_a: str, split_b: str, role_a: str | None, role_b: str | None, conflict: bool) -> str:
    """One kind per pair (module docstring), the most actionable first."""
    if conflict:
        return "label-conflict"
    if {role_a, role_b} == {"train", "val"}:
        return "train-val"
    if split_a == split_b:
        return f"{split_a}-{split_b}"
    return "train-test"


def find_duplicates(sessions, dataset: str, run_id: int | None = None, *, max_bits: int = PHASH_MAX,
                    min_cosine: float = COSINE_MIN, embedding_ratio: float | None = None, progress: bool = True,
                    hash_missing: bool = True) -> dict:
    """`aivh duplicates`: pairs of exact and near copies, their clusters and kinds (module docstring).
    embedding_ratio: the ratio of copy_pairs' rule (None: set from the run's embeddings).
    hash_missing=False (a page rendering): only read the stored hashes, never write; an image
    without one is in no near-copy pair ("hashed" in the result counts those that have one)."""
    from db import labelling, queries

    t0 = time.perf_counter()
    with sessions() as s:
        ds = queries.get_dataset(s, dataset)
        roles: dict[int, str] = {}
        if run_id is not None:
            run = queries.get_run(s, run_id)
            if run.dataset_id != ds.id:
                raise ValueError(f"run {run_id} was not trained on dataset {dataset!r}")
            emb = embeddings.load(run_id)  # LookupError naming `aivh embed` when missing
            roles = {i: "train" for i in queries.run_image_ids(s, run_id, "train")}
            roles.update({i: "val" for i in queries.run_image_ids(s, run_id, "val")})
        facts = queries.image_facts(s, ds.id)
        labels = labelling.current_labels(s, ds.id)
    ids = [f[0] for f in facts]
    paths, splits, sha1 = [f[1] for f in facts], [f[2] for f in facts], [f[3] for f in facts]
    if hash_missing:
        with sessions.begin() as s:  # hashes missing so far: computed now, stored for next time
            hashes = ensure_phashes(s, ds.id, Path(ds.root), progress=progress)
    else:
        with sessions() as s:
            hashes = queries.phashes(s, ds.id)
    t_hash = time.perf_counter() - t0

    found = _copies(ids, sha1, hashes, max_bits)
    t_nn, scale, notes, left_out = 0.0, {}, [], []
    if run_id is not None:
        t1 = time.perf_counter()
        scale = _add_embedding_pairs(found, ids, emb, min_cosine, embedding_ratio)
        left_out = [{"a": paths[x], "b": paths[y], "a_id": ids[x], "b_id": ids[y], "distance": d, "ratio": r}
                    for x, y, d, r in scale["left_out_pairs"][:LEFT_OUT_SHOWN]]
        t_nn = time.perf_counter() - t1
        if scale["note"]:
            notes.append(f"run {run_id}: {scale['note']}")
    pairs, sizes = _pairs(found, ids, paths, splits, labels, roles)
    largest = max(sizes, default=0)
    warnings = ([giant_cluster_warning(pairs, largest, len(ids), scale.get("ratio"))]
                if largest > GIANT_SHARE * len(ids) else [])
    return {"dataset": dataset, "run": run_id, "images": len(ids), "hashed": len(hashes),
            "pairs": pairs, "counts": {k: sum(p["kind"] == k for p in pairs) for k in KINDS},
            "matches": {m: sum(p["match"] == m for p in pairs) for m in MATCHES}, "clusters": len(sizes),
            "largest_cluster": largest, "warnings": warnings, "notes": notes, "embedding_left_out": left_out,
            "thresholds": {"phash_max_bits": max_bits, "min_cosine": min_cosine if run_id is not None else None,
                           "embedding_max_distance": scale.get("max_distance"),
                           "embedding_ratio": scale.get("ratio"), "embedding_ratio_source": scale.get("ratio_source"),
                           "embedding_rank": scale.get("rank"), "embedding_scale_median": scale.get("scale_median"),
                           "embedding_dimension": scale.get("dimension"),
                           "embedding_left_out": scale.get("left_out")},
            "seconds": round(time.perf_counter() - t0, 2), "hash_seconds": round(t_hash, 2),
            "neighbour_seconds": round(t_nn, 2)}


def giant_cluster_warning(pairs: list[dict], largest: int, images: int, ratio: float | None = None) -> str:
    """The sentence for a cluster that swallows most of the dataset (cluster 1, the largest): how
    many of each match joined it, and which threshold to tighten (ratio: the embedding rule's,
    None when --min-cosine alone made the embedding pairs)."""
    joined = {m: sum(p["cluster"] == 1 and p["match"] == m for p in pairs) for m in MATCHES}
    how = ", ".join(f"{n:,} {m}" for m, n in joined.items() if n)
    head = f"one cluster holds {largest:,} of {images:,} images ({largest / images:.0%}), joined by {how} pairs"
    if not joined["embedding"] and not joined["phash"]:
        return f"{head}: byte-identical files, most of the dataset is one picture"
    if joined["embedding"]:
        hint = ("raise --min-cosine" + (f" or lower --embedding-ratio (now {ratio:.2g})" if ratio is not None else "")
                + ", or use the embeddings of a run that separates images")
    else:
        hint = "lower --max-bits"
    return (f"{head}: copies come in small groups, so these are not all copies of one another and the "
            f"thresholds link unrelated images ({hint})")


Found = dict[tuple[int, int], tuple[str, float]]  # (position a, position b), a < b -> (match, distance)


def _copies(ids: list[int], sha1: list[str | None], hashes: dict[int, str], max_bits: int) -> Found:
    """Exact copies (distance 0), then perceptual-hash near copies (distance in bits) among one
    image of each set of byte-identical ones (the copies join its cluster through the exact
    pairs: a big set of copies stays a star, not every pair again by hash)."""
    found: Found = {pair: ("exact", 0.0) for pair in _exact_pairs(sha1)}
    first_of: dict[str, int] = {}
    hashed = [p for p, i in enumerate(ids) if i in hashes
              and (not sha1[p] or first_of.setdefault(sha1[p], p) == p)]
    a, b, d = phash_pairs([hashes[ids[p]] for p in hashed], max_bits)
    for x, y, bits in zip(a.tolist(), b.tolist(), d.tolist()):
        found.setdefault((hashed[x], hashed[y]), ("phash", float(bits)))
    return found


def _add_embedding_pairs(found: Found, ids: list[int], emb: embeddings.Embeddings, min_cosine: float,
                         ratio: float | None = None) -> dict:
    """Pairs by embedding (distance 1 - cosine) that no stronger match found already; returns how
    the threshold was set on the run's own scale (neighbours.copy_pairs), with the pairs it left
    out as (position a, position b, distance, ratio), less those an exact or hash copy already
    joins (directly or through their cluster)."""
    pos_of = {i: p for p, i in enumerate(ids)}
    rows = [r for r, i in enumerate(emb.image_id.tolist()) if i in pos_of]
    pos = np.array([pos_of[int(emb.image_id[r])] for r in rows], dtype=np.int64)
    keys = list(found)
    joined = clusters(len(ids), np.array([k[0] for k in keys], dtype=np.int64),
                      np.array([k[1] for k in keys], dtype=np.int64)) if keys else np.arange(len(ids))
    copied = np.bincount(joined, minlength=len(ids))[joined] > 1

    def known(x: int, y: int) -> bool:  # rows x, y already in one cluster of exact or hash copies
        px, py = pos[x], pos[y]
        return bool(copied[px] and joined[px] == joined[py])

    a, b, c, scale = copy_pairs(emb.vectors[rows], min_cosine, ratio=ratio, known=known)
    for x, y, cos in zip(a.tolist(), b.tolist(), c.tolist()):
        pair = tuple(sorted((int(pos[x]), int(pos[y]))))
        found.setdefault(pair, ("embedding", round(1.0 - float(cos), 6)))
    scale["left_out_pairs"] = [(*sorted((int(pos[x]), int(pos[y]))), round(1.0 - cos, 6), round(r, 4))
                               for x, y, cos, r in scale["left_out_pairs"]]
    return scale


def _pairs(found: Found, ids, paths, splits, labels: dict[int, int], roles: dict[int, str],
           ) -> tuple[list[dict], list[int]]:
    """The report's pairs (kind, cluster numbered 1.. biggest first), most actionable first, and
    the clusters' sizes."""
    keys = sorted(found)
    a = np.array([k[0] for k in keys], dtype=np.int64)
    b = np.array([k[1] for k in keys], dtype=np.int64)
    cluster_of = clusters(len(ids), a, b) if keys else np.zeros(len(ids), dtype=np.int64)
    size = np.bincount(cluster_of) if len(cluster_of) else np.zeros(0, dtype=np.int64)
    used = sorted({int(cluster_of[x]) for x in a.tolist()}, key=lambda c: (-size[c], c))
    number = {c: n + 1 for n, c in enumerate(used)}
    pairs = []
    for (x, y) in keys:
        match, dist = found[(x, y)]
        la, lb = labels.get(ids[x]), labels.get(ids[y])
        conflict = match != "embedding" and la is not None and lb is not None and la != lb
        pairs.append({"a": paths[x], "b": paths[y],
                      "kind": pair_kind(splits[x], splits[y], roles.get(ids[x]), roles.get(ids[y]), conflict),
                      "distance": dist, "match": match, "cluster": number[int(cluster_of[x])],
                      "a_id": ids[x], "b_id": ids[y]})
    pairs.sort(key=lambda p: (KINDS.index(p["kind"]) if p["kind"] in KINDS else len(KINDS),
                              MATCHES.index(p["match"]), p["distance"], p["a"], p["b"]))
    return pairs, [int(size[c]) for c in used]


# ---------------------------------------------------------------- groups for honest splits

def split_groups(s, dataset_id: int, root: Path, ids, *, group: str | None,
                 progress: bool = True) -> tuple[dict[int, str], dict]:
    """image id -> group key for `ids` (training images), and what was done, for the run's config.

    Always: byte-identical copies (sha1) and the train.csv `group` recorded with each image at
    import (never the live CSV: an edit counts once a re-import records it; images imported
    before groups were recorded make it refuse, naming the import that records them). With group
    "near-duplicates": also perceptual-hash near copies (PHASH_MAX bits). Groups are joined
    transitively (connected components); each gets the smallest member's content key, so the
    split's stable-hash rule is unchanged for images without copies."""
    from db import queries

    if group not in (None, *GROUPINGS):
        raise ValueError(f"unknown grouping {group!r}: {' or '.join(GROUPINGS)}")
    ids = sorted(ids)
    _refuse_unrecorded_groups(s, dataset_id, root, ids)
    keys = queries.content_keys(s, dataset_id, "train")
    pos = {i: p for p, i in enumerate(ids)}
    edges: list[tuple[int, int]] = []
    by_key: dict[str, int] = {}
    for i in ids:
        k = keys.get(i, f"id:{i}")
        if k in by_key:
            edges.append((by_key[k], pos[i]))
        else:
            by_key[k] = pos[i]
    csv_groups = queries.csv_groups(s, dataset_id)
    by_group: dict[str, int] = {}
    for i in ids:
        g = csv_groups.get(i)
        if g:
            if g in by_group:
                edges.append((by_group[g], pos[i]))
            else:
                by_group[g] = pos[i]
    how = {"by": ["sha1"] + (["csv group"] if csv_groups else [])}
    if group == "near-duplicates":
        hashes = ensure_phashes(s, dataset_id, root, progress=progress)
        hashed = [i for i in ids if i in hashes]
        a, b, _ = phash_pairs([hashes[i] for i in hashed])
        edges += [(pos[hashed[x]], pos[hashed[y]]) for x, y in zip(a.tolist(), b.tolist())]
        how["by"].append(f"phash<={PHASH_MAX}")
    a = np.array([e[0] for e in edges], dtype=np.int64)
    b = np.array([e[1] for e in edges], dtype=np.int64)
    label = clusters(len(ids), a, b) if ids else np.zeros(0, dtype=np.int64)
    first: dict[int, str] = {}
    for i, c in zip(ids, label.tolist()):
        first.setdefault(c, keys.get(i, f"id:{i}"))
    out = {i: first[c] for i, c in zip(ids, label.tolist())}
    sizes = np.bincount(label) if len(label) else np.zeros(0, dtype=np.int64)
    how.update({"group": group or "copies", "groups": int(np.sum(sizes > 1)),
                "images_grouped": int(np.sum(sizes[sizes > 1])), "largest_group": int(sizes.max(initial=0))})
    return out, how


def _refuse_unrecorded_groups(s, dataset_id: int, root: Path, ids: list[int]) -> None:
    """ValueError (one line) when some of `ids` were imported before aivh recorded train.csv's
    group column (migration 0006): a split never reads the live CSV, so they wait for the next
    import to record theirs."""
    from db import queries
    from db.models import Dataset

    n = queries.without_group(s, ids)
    if n:
        name = s.get(Dataset, dataset_id).name
        raise ValueError(f"groups not recorded for {n} image(s) of dataset {name!r} imported before aivh "
                         f"recorded train.csv's group column: run `aivh import {root} --name {name}` again")
