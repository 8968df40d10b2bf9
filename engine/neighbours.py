"""Neighbours: a run's embeddings (`aivh embed`), exact and near copies (`aivh duplicates`),
near-copy groups for honest splits, the 2-D embedding map and "more like this".

Three ways two images are copies, strongest first:
  exact      the same bytes (sha1, recorded at import)
  phash      perceptual hashes (imagehash.phash, 64 bits of the 32x32 DCT) within PHASH_MAX bits:
             survives re-encoding and resizing; hashed in worker processes, stored at first use
  embedding  cosine similarity of the run's pooled features of at least COSINE_MIN (with --run)
Pairs are joined into clusters (scipy's connected components) and each pair gets one kind:
label-conflict (an exact or phash copy whose current labels differ), train-val (a leak: one
side trained, the other validated, with --run), train-train, train-test, test-test.

Nearest neighbours: faiss (exact inner product up to EXACT_MAX images, an inverted-file index
above it; binary Hamming search for the hashes). Measured against scikit-learn and pynndescent
in docs/benchmarks.md.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import embeddings

log = logging.getLogger("aivh.neighbours")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines on which CPU build loaded

# Thresholds, chosen on planted copies in cifake-mini (docs/benchmarks.md, "Neighbours"):
PHASH_MAX = 6  # bits of 64: planted re-encoded+resized copies of 32x32 images reach 6; on cifake-mini unrelated pairs start at 8
COSINE_MIN = 0.90  # Lite0 probe features at 64 px on cifake-mini: no unrelated pair above 0.87
NEIGHBOURS = 10  # nearest neighbours searched per image by embedding
EXACT_MAX = 20_000  # up to this many images the embedding search is exact; above, faiss IVF
NPROBE = 8  # IVF lists searched per query (of 4 sqrt(N)): docs/benchmarks.md, "Neighbours"
MATCHES = ("exact", "phash", "embedding")
KINDS = ("label-conflict", "train-val", "train-train", "train-test", "test-test")
GROUPINGS = ("copies", "near-duplicates")  # what a split keeps together (plus train.csv's group column)


# ---------------------------------------------------------------- embeddings (`aivh embed`)

def embed_run(sessions, run_id: int, split: str = "all", *, batch_size: int = 64, device: str = "auto",
              workers: int | None = None, progress: bool = True, decode: str = "auto") -> dict:
    """Every image of `split` through the run's checkpoint (the prediction path: the same loader,
    device, bf16 autocast on CUDA), pooled features kept as float16 in runs/<id>/embeddings.npz.
    Streamed: one float16 row per image is all that is kept."""
    from tqdm import tqdm

    from db import queries
    from db.models import Dataset
    from engine import backbones
    from engine.checkpoints import load_checkpoint
    from engine.device import prepare, resolve_device
    from engine.infer import embed
    from engine.loader import make_loader
    from engine.predict import _split_images

    t0 = time.perf_counter()
    with sessions() as s:
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint yet (status {run.status}): "
                             "train it, or make a probe run (`aivh probe`) for a pretrained backbone's features")
        root = Path(s.get(Dataset, run.dataset_id).root)
        ims = _split_images(s, run, split)
        stamps = queries.image_stamps(s, run.dataset_id)
    if not ims:
        raise ValueError(f"run {run_id}: no readable {split} images to embed")
    model, cfg, _epoch, sha1 = load_checkpoint(Path(run.checkpoint))
    dev = resolve_device(device)
    model = prepare(model, dev)
    workers = cfg.get("workers", 2) if workers is None else workers
    loader = make_loader(root, [p for _, p in ims], None, size=cfg["img_size"], batch_size=batch_size,
                         workers=workers, device=dev, mode=cfg.get("resize_mode", "resize"), decode=decode,
                         stamps=stamps)
    vectors: np.ndarray | None = None
    done = np.zeros(len(ims), dtype=bool)
    skipped = []
    bar = tqdm(total=len(ims), desc=f"embed {split}", unit="img", disable=not progress, mininterval=0.5)
    for idx, feats, failed in embed(model, loader, dev, norm=backbones.norm_of(cfg)):
        if len(idx):
            if vectors is None:
                vectors = np.zeros((len(ims), feats.shape[1]), dtype=np.float16)
            pos = idx.numpy()
            vectors[pos] = feats.numpy().astype(np.float16)
            done[pos] = True
        skipped += [msg for _, msg in failed]
        bar.update(len(idx) + len(failed))
    bar.close()
    if vectors is None:
        raise ValueError(f"run {run_id}: no {split} image could be decoded ({len(skipped)} skipped)")
    ids = np.array([i for i, _ in ims], dtype=np.int64)
    file = embeddings.save(run_id, ids[done], vectors[done], sha1)
    return {"run": run_id, "split": split, "images": int(done.sum()), "dim": int(vectors.shape[1]),
            "skipped": len(skipped), "skipped_files": skipped, "checkpoint_sha1": sha1, "path": str(file),
            "seconds": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------- perceptual hashes

def _phash_one(job: tuple[str, str]) -> str | None:
    """One image's perceptual hash (16 hex digits), None when it cannot be decoded. Runs in a
    worker process: top-level and light."""
    import imagehash

    from engine.images import load_rgb, resolve_inside

    root, rel_path = job
    try:
        im = load_rgb(resolve_inside(Path(root), rel_path), 64)  # JPEG draft: no full decode of big files
        return str(imagehash.phash(im))
    except (OSError, ValueError, PermissionError) as e:
        log.warning("no perceptual hash for %s: %s", rel_path, e)
        return None


def hash_images(root: Path, todo: list[tuple[int, str]], *, processes: int | None = None,
                progress: bool = True) -> dict[int, str]:
    """image id -> perceptual hash for `todo` (id, rel_path), hashed by worker processes in
    chunks, with a progress bar; images that fail to decode are left out."""
    from tqdm import tqdm

    if not todo:
        return {}
    processes = processes or max(1, min(len(os.sched_getaffinity(0)), 16))
    jobs = [(str(root), p) for _, p in todo]
    bar = tqdm(total=len(todo), desc="perceptual hashes", unit="img", disable=not progress, mininterval=0.5)
    out: dict[int, str] = {}
    if processes == 1 or len(todo) < 200:
        results = map(_phash_one, jobs)
        pool = None
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ProcessPoolExecutor(processes, mp_context=ctx)
        results = pool.map(_phash_one, jobs, chunksize=max(16, min(512, len(jobs) // (processes * 8))))
    try:
        for (i, _), h in zip(todo, results):
            if h is not None:
                out[i] = h
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

    known = queries.phashes(s, dataset_id)
    todo = [(i, p) for i, p in queries.image_paths(s, dataset_id) if i not in known]
    if todo:
        fresh = hash_images(root, todo, progress=progress)
        queries.set_phashes(s, fresh)
        known.update(fresh)
    return known


def _bits(hexes: list[str]) -> np.ndarray:
    """(N, 8) uint8: the 64-bit hashes as faiss binary vectors."""
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(len(hexes), 8).copy()


def phash_pairs(hexes: list[str], max_bits: int = PHASH_MAX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, Hamming distance) of every pair of hashes within max_bits, i < j (faiss binary range
    search: exact, every pair, not only the nearest few)."""
    import faiss

    if len(hexes) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    x = _bits(hexes)
    index = faiss.IndexBinaryFlat(64)
    index.add(x)
    lims, dist, nbr = index.range_search(x, max_bits + 1)  # strict: distances < radius
    rows = np.repeat(np.arange(len(hexes)), np.diff(lims).astype(np.int64))
    keep = rows < nbr
    return rows[keep], nbr[keep].astype(np.int64), dist[keep].astype(np.int64)


# ---------------------------------------------------------------- embedding neighbours

def _unit(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def knn(vectors: np.ndarray, k: int = NEIGHBOURS, *, exact_max: int = EXACT_MAX, seed: int = 0,
        ) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), (N, k) each, of every row's k nearest other rows by cosine (-1
    where fewer exist). Exact (faiss IndexFlatIP) up to exact_max rows; above, an inverted-file
    index (4 sqrt(N) lists, NPROBE probed): near copies, at cosine near 1, share a list almost always."""
    import faiss

    x = _unit(vectors)
    n, d = x.shape
    k = min(k + 1, n)
    if n <= exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = NPROBE
    index.add(x)
    sims, idx = index.search(x, k)
    # drop each row itself (the first hit, or wherever an exact copy put it)
    own = idx == np.arange(n)[:, None]
    own[:, -1] |= ~own.any(axis=1)  # a row that did not find itself drops its last hit
    keep = ~own
    return sims[keep].reshape(n, k - 1), idx[keep].reshape(n, k - 1)


def embedding_pairs(vectors: np.ndarray, min_cosine: float = COSINE_MIN, k: int = NEIGHBOURS,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) for each row's k nearest neighbours at or above min_cosine, i < j, once."""
    if len(vectors) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    sims, idx = knn(vectors, k)
    rows = np.repeat(np.arange(len(vectors)), sims.shape[1])
    sims, idx = sims.ravel(), idx.ravel()
    keep = (idx >= 0) & (sims >= min_cosine)
    a, b, c = rows[keep], idx[keep].astype(np.int64), sims[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo * len(vectors) + hi, return_index=True)
    return lo[first], hi[first], c[first]


def nearest(emb: embeddings.Embeddings, image_id: int, k: int = 12) -> list[tuple[int, float]]:
    """The k images most like `image_id` by cosine ((id, similarity), most similar first; itself
    left out): one brute-force pass in chunks, exact, fast enough for one image of 80,000."""
    row = int(emb.rows([image_id])[0])
    if row < 0:
        raise LookupError(f"image {image_id} has no embedding in this run (run `aivh embed` again)")
    q = _unit(emb.vectors[row:row + 1])[0]
    sims = np.empty(len(emb.image_id), dtype=np.float32)
    step = 8192
    for start in range(0, len(sims), step):
        sims[start:start + step] = _unit(emb.vectors[start:start + step]) @ q
    sims[row] = -np.inf
    k = min(k, len(sims) - 1)
    if k <= 0:
        return []
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.argsort(-sims[top], kind="stable")]
    return [(int(emb.image_id[t]), float(sims[t])) for t in top]


# ---------------------------------------------------------------- clusters and kinds

def clusters(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cluster label of each of n items joined by the edges (a, b) (scipy connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


@dataclass(frozen=True)
class ImageFacts:
    ids: list[int]
    paths: list[str]
    splits: list[str]
    sha1: list[str | None]


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
                    min_cosine: float = COSINE_MIN, progress: bool = True) -> dict:
    """`aivh duplicates`: pairs of exact and near copies, their clusters and kinds (module docstring)."""
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
    with sessions.begin() as s:  # hashes missing so far: computed now, stored for next time
        hashes = ensure_phashes(s, ds.id, Path(ds.root), progress=progress)
    t_hash = time.perf_counter() - t0

    found = _copies(ids, sha1, hashes, max_bits)
    t_nn = 0.0
    if run_id is not None:
        t1 = time.perf_counter()
        _add_embedding_pairs(found, ids, emb, min_cosine)
        t_nn = time.perf_counter() - t1
    pairs, sizes = _pairs(found, ids, paths, splits, labels, roles)
    return {"dataset": dataset, "run": run_id, "images": len(ids), "hashed": len(hashes),
            "pairs": pairs, "counts": {k: sum(p["kind"] == k for p in pairs) for k in KINDS},
            "matches": {m: sum(p["match"] == m for p in pairs) for m in MATCHES}, "clusters": len(sizes),
            "largest_cluster": max(sizes, default=0),
            "thresholds": {"phash_max_bits": max_bits, "min_cosine": min_cosine if run_id is not None else None},
            "seconds": round(time.perf_counter() - t0, 2), "hash_seconds": round(t_hash, 2),
            "neighbour_seconds": round(t_nn, 2)}


Found = dict[tuple[int, int], tuple[str, float]]  # (position a, position b), a < b -> (match, distance)


def _copies(ids: list[int], sha1: list[str | None], hashes: dict[int, str], max_bits: int) -> Found:
    """Exact copies (distance 0), then perceptual-hash near copies (distance in bits)."""
    found: Found = {pair: ("exact", 0.0) for pair in _exact_pairs(sha1)}
    hashed = [p for p, i in enumerate(ids) if i in hashes]
    a, b, d = phash_pairs([hashes[ids[p]] for p in hashed], max_bits)
    for x, y, bits in zip(a.tolist(), b.tolist(), d.tolist()):
        found.setdefault((hashed[x], hashed[y]), ("phash", float(bits)))
    return found


def _add_embedding_pairs(found: Found, ids: list[int], emb: embeddings.Embeddings, min_cosine: float) -> None:
    """Pairs by embedding (distance 1 - cosine) that no stronger match found already."""
    pos_of = {i: p for p, i in enumerate(ids)}
    rows = [r for r, i in enumerate(emb.image_id.tolist()) if i in pos_of]
    a, b, c = embedding_pairs(emb.vectors[rows], min_cosine)
    for x, y, cos in zip(a.tolist(), b.tolist(), c.tolist()):
        pair = tuple(sorted((pos_of[int(emb.image_id[rows[x]])], pos_of[int(emb.image_id[rows[y]])])))
        found.setdefault(pair, ("embedding", round(1.0 - float(cos), 6)))


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

    Always: byte-identical copies (sha1) and train.csv's `group` column when it has one. With
    group "near-duplicates": also perceptual-hash near copies (PHASH_MAX bits). Groups are
    joined transitively (connected components); each gets the smallest member's content key, so
    the split's stable-hash rule is unchanged for images without copies."""
    from db import queries
    from engine.kaggle import read_groups

    if group not in (None, *GROUPINGS):
        raise ValueError(f"unknown grouping {group!r}: {' or '.join(GROUPINGS)}")
    ids = sorted(ids)
    keys = queries.content_keys(s, dataset_id, "train")
    paths = dict(queries.image_paths(s, dataset_id, "train"))
    pos = {i: p for p, i in enumerate(ids)}
    edges: list[tuple[int, int]] = []
    by_key: dict[str, int] = {}
    for i in ids:
        k = keys.get(i, f"id:{i}")
        if k in by_key:
            edges.append((by_key[k], pos[i]))
        else:
            by_key[k] = pos[i]
    csv_groups = read_groups(root)
    by_group: dict[str, int] = {}
    for i in ids:
        g = csv_groups.get(paths.get(i, ""))
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
                "images_grouped": int(np.sum(sizes[sizes > 1]))})
    return out, how


# ---------------------------------------------------------------- the 2-D map

MAP_FILE = "embedding_map.npz"


def _source(run_id: int) -> str:
    st = embeddings.path(run_id).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def embedding_map(run_id: int, *, method: str | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(image ids, (N, 2) float32 coordinates, method) of the run's embeddings: UMAP (umap-learn)
    when installed and method is auto or umap, else PCA (method None: $AIVH_MAP, else auto); computed once, cached next to the
    embeddings (runs/<id>/embedding_map.npz) and recomputed only when they change."""
    from engine import atomic

    method = method or os.environ.get("AIVH_MAP", "auto")  # AIVH_MAP=pca: no UMAP (and no numba JIT)
    if not embeddings.exists(run_id):
        embeddings.load(run_id)  # the LookupError that names `aivh embed`
    file = embeddings.path(run_id).with_name(MAP_FILE)
    source = _source(run_id)
    if file.is_file():  # the embeddings are read only when the map must be computed
        with np.load(file, allow_pickle=False) as z:
            if str(z["source"]) == source and (method == "auto" or str(z["method"]) == method):
                return z["image_id"].astype(np.int64), z["xy"], str(z["method"])
    emb = embeddings.load(run_id)
    xy, used = project(emb.vectors, method=method, seed=seed)
    with atomic.atomic_path(file, durable=False) as tmp, open(tmp, "wb") as f:
        np.savez(f, image_id=emb.image_id, xy=xy, method=np.array(used), source=np.array(source))
    return emb.image_id, xy, used


def project(vectors: np.ndarray, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) float32 coordinates, and "umap" or "pca"."""
    x = _unit(vectors)
    if method in ("auto", "umap") and len(x) >= 16:
        try:
            import umap  # noqa: F401 - numba: a slow first import
        except ImportError:
            if method == "umap":
                raise ValueError("umap-learn is not installed: pip install umap-learn, or use PCA") from None
        else:
            from umap import UMAP

            xy = UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1).fit_transform(x)
            return np.asarray(xy, dtype=np.float32), "umap"
    from sklearn.decomposition import PCA

    if len(x) < 2:
        return np.zeros((len(x), 2), dtype=np.float32), "pca"
    xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return xy.astype(np.float32), "pca"
