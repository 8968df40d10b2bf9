"""Neighbours in a run's embeddings: `aivh embed` (each image's pooled features through the
prediction path), nearest neighbours by cosine (the pairs `aivh duplicates --run` adds, "more
like this" in Review) and the 2-D map of the Map page.

Nearest neighbours: faiss, exact inner product up to EXACT_MAX images and an inverted-file
index above it; measured against scikit-learn and pynndescent in docs/benchmarks.md
("Neighbours"). Copies by bytes and perceptual hash: engine/duplicates.py.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from engine import embeddings

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines on which CPU build loaded

# chosen on planted copies in cifake-mini (docs/benchmarks.md, "Neighbours")
COSINE_MIN = 0.90  # Lite0 probe features at 64 px on cifake-mini: no unrelated pair above 0.87
# A cosine means something only against the run's own spread (an undertrained model crowds
# unrelated images together: a bird and a horse at distance 0.0027): copy_pairs' rule, its
# reasons in its docstring and its figures in docs/benchmarks.md ("Thresholds").
SCALE_RANK = 32  # each image's scale: its distance to its 32nd nearest other image
FALSE_PAIRS = 0.01  # unrelated pairs the rule expects to let through in a whole dataset
RATIO_MAX = 0.5  # the ratio (Euclidean on unit vectors) never looser than this
SEPARATE_MIN = 0.01  # median scale under this (25x float16 rounding): the embeddings do not separate images
SCALE_MIN_IMAGES = 10  # fewer images: no neighbourhood to take a scale from, --min-cosine alone
LEFT_OUT_SHOWN = 50  # left-out pairs listed in the report (all counted)
NEIGHBOURS = 10  # nearest neighbours searched per image by embedding_pairs (copy_pairs: SCALE_RANK)
EXACT_MAX = 20_000  # up to this many images the embedding search is exact; above, faiss IVF
NPROBE = 8  # IVF lists searched per query (of 4 sqrt(N)): 8 and 16 found the same planted pairs, 8 in 38 s


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
    from engine.device import default_workers, prepare, resolve_device
    from engine.images import jpeg_scale_of
    from engine.infer import embed
    from engine.loader import make_loader
    from engine.predict import run_split_images

    t0 = time.perf_counter()
    with sessions() as s:
        run = queries.get_run(s, run_id)
        if not run.checkpoint:
            raise ValueError(f"run {run_id} has no checkpoint yet (status {run.status}): "
                             "train it, or make a probe run (`aivh probe`) for a pretrained backbone's features")
        root = Path(s.get(Dataset, run.dataset_id).root)
        ims = run_split_images(s, run, split)
        stamps = queries.image_stamps(s, run.dataset_id)
    if not ims:
        raise ValueError(f"run {run_id}: no readable {split} images to embed")
    model, cfg, _epoch, sha1 = load_checkpoint(Path(run.checkpoint))
    dev = resolve_device(device)
    model = prepare(model, dev)
    workers = cfg.get("workers", default_workers(dev.type == "cuda")) if workers is None else workers
    loader = make_loader(root, [p for _, p in ims], None, size=cfg["img_size"], batch_size=batch_size,
                         workers=workers, device=dev, mode=cfg.get("resize_mode", "resize"), decode=decode,
                         stamps=stamps, jpeg_scale=jpeg_scale_of(cfg))
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
    return _once(sims, idx, sims >= min_cosine)


def _once(sims: np.ndarray, idx: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine), i < j, each pair once, of the (row, neighbour) hits marked `near`."""
    n = len(sims)
    rows = np.repeat(np.arange(n), sims.shape[1])
    keep = ((idx >= 0) & near).ravel()
    a, b, c = rows[keep], idx.ravel()[keep].astype(np.int64), sims.ravel()[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo * n + hi, return_index=True)
    return lo[first], hi[first], c[first]


def copy_pairs(vectors: np.ndarray, min_cosine: float = COSINE_MIN, *, ratio: float | None = None,
               rank: int = SCALE_RANK, known=None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(i, j, cosine), i < j, of the pairs `aivh duplicates --run` calls copies, and a dict that
    says how (the thresholds, the pairs left out, a note).

    A pair is a copy when it is within 1 - min_cosine AND its distance is under `ratio` of both
    images' scale: each image's distance to its rank-th (32nd) nearest other image, Euclidean on
    unit vectors (sqrt(2 x cosine distance)). Why this scale and this ratio:
    - copies cannot set it: a group of up to rank - 1 copies of one picture (AI datasets have
      batches of 4-8 images per prompt) sits inside it, and twins shift it by one neighbour, so a
      dataset where half the images have a twin keeps its scale. A nearer rank (the 5th) was
      itself a copy in a group of 7 and left every pair of it out.
    - how many unrelated images fall under a ratio depends on the embeddings' intrinsic
      dimension d: about (rank - 1) x ratio^d per image when neighbours spread evenly in d
      dimensions. An undertrained model puts images on a few directions (d of 3 to 8), where a
      fixed ratio calls a hundred unrelated pairs copies. So d is estimated from the images'
      own neighbours rank/2 .. rank - 1 (the maximum-likelihood rule of Levina and Bickel; a
      median over images, so neither copies nor twins move it) and the ratio is set so the
      whole dataset expects FALSE_PAIRS unrelated pairs: (2 FALSE_PAIRS / (n (rank - 1)))^(1/d),
      at most RATIO_MAX. Well-spread embeddings get RATIO_MAX (of 400 images: d of 20 and more).
    - no pair by embedding when the median scale is under SEPARATE_MIN: then every image is
      within float16 rounding of its 32nd neighbour and the embeddings do not separate images.
      Common copies cannot cause this refusal, only a model that maps images to one vector.
    - under SCALE_MIN_IMAGES images there is no neighbourhood to take a scale from: --min-cosine
      alone, said.
    `ratio` given: used instead of the estimated one (`--embedding-ratio`). `known(i, j)`: True
    for a pair already found as copies another way, not counted or listed as left out. Left out:
    the pairs within --min-cosine the ratio refused, each with its ratio (the --embedding-ratio
    that would keep it). Figures: docs/benchmarks.md ("Thresholds")."""
    empty = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    n = len(vectors)
    asked = round(1.0 - float(min_cosine), 6)
    info = {"max_distance": asked, "ratio": ratio, "ratio_source": "given" if ratio is not None else "estimated",
            "rank": None, "scale_median": None, "dimension": None, "left_out": 0, "left_out_pairs": [],
            "note": None}
    if n < 2:
        return (*empty, info)
    k = min(rank, n - 1)
    sims, idx = knn(vectors, max(k, NEIGHBOURS))
    cos_dist = np.where(idx >= 0, np.clip(1.0 - sims.astype(np.float64), 0.0, 2.0), np.inf)
    within = cos_dist <= asked
    if n < SCALE_MIN_IMAGES:
        info["ratio"] = None
        info["note"] = (f"{n} images are too few to take a scale from their neighbours: pairs by embedding "
                        f"within --min-cosine's distance {asked:g} alone"
                        + (" (--embedding-ratio not applied)" if ratio is not None else ""))
        return (*_once(sims, idx, within), info)
    euclid = np.sqrt(2.0 * cos_dist)
    scale = euclid[:, k - 1]
    info["rank"] = k
    typical = float(np.median(scale))
    scale = np.where(np.isfinite(scale), scale, typical)  # the approximate index found fewer than k
    info["scale_median"] = round(typical, 6)
    if typical < SEPARATE_MIN:
        info["max_distance"] = info["ratio"] = None
        info["note"] = (f"the embeddings do not separate images: the median image's {_ordinal(k)} nearest other "
                        f"image is at distance {typical:.2g} (Euclidean on unit vectors, under {SEPARATE_MIN:g}: "
                        "float16 rounding), so nearness says nothing about copies and no pair is made by embedding "
                        "(an undertrained model maps every image to nearly one vector: a trained run's or a "
                        "probe's embeddings separate them)")
        return (*empty, info)
    dim = intrinsic_dimension(euclid[:, :k])
    info["dimension"] = None if not np.isfinite(dim) else round(dim, 2)
    if ratio is None:
        ratio = RATIO_MAX if not np.isfinite(dim) else \
            min(RATIO_MAX, (2 * FALSE_PAIRS / (n * (k - 1))) ** (1.0 / max(dim, 1e-9)))
        info["ratio"] = round(float(ratio), 6)
    partner = np.where(idx >= 0, idx, np.arange(n)[:, None])
    pair_scale = np.minimum(scale[:, None], scale[partner])
    with np.errstate(divide="ignore", invalid="ignore"):
        pair_ratio = np.where(euclid > 0, euclid / pair_scale, 0.0)
    near = within & (pair_ratio <= ratio)
    a, b, c = _once(sims, idx, near)
    la, lb, lc = _once(sims, idx, within & ~near)
    rows_ratio = {}
    for x, y in zip(*np.nonzero(within & ~near)):
        lo, hi = sorted((int(x), int(idx[x, y])))
        rows_ratio[(lo, hi)] = float(pair_ratio[x, y])
    kept = set(zip(a.tolist(), b.tolist()))
    left = [(x, y, cs, rows_ratio[(x, y)]) for x, y, cs in zip(la.tolist(), lb.tolist(), lc.tolist())
            if (x, y) not in kept and not (known and known(x, y))]
    left.sort(key=lambda t: t[3])
    info["left_out"] = len(left)
    info["left_out_pairs"] = left
    if left:
        m = len(left)
        how = ("the ratio given" if info["ratio_source"] == "given" else
               f"the ratio set for embeddings of intrinsic dimension about {dim:.1f}" if np.isfinite(dim)
               else "the loosest ratio allowed")
        info["note"] = (f"{m:,} pair{'s' if m != 1 else ''} within --min-cosine's distance {asked:g} left out by "
                        f"embedding: not under {ratio:.2g} of both images' distance to their {_ordinal(k)} nearest "
                        f"other image ({how}), so near but no nearer than their neighbourhood makes likely; "
                        f"each listed with its ratio (--json: embedding_left_out), --embedding-ratio keeps those "
                        f"under it")
    return a, b, c, info


def intrinsic_dimension(dist: np.ndarray) -> float:
    """The median over images of the maximum-likelihood intrinsic dimension (Levina and Bickel,
    2004) from each image's sorted distances to its k nearest others (N, k), using only its
    neighbours k/2 .. k - 1 against the k-th: -log of the j-th smallest of k - 1 uniform
    variables has mean H(k - 1) - H(j - 1), so neighbours spread evenly in d dimensions give
    log(r_k / r_j) of that mean over d. Copies nearer than the k/2-th neighbour do not enter;
    images whose k-th neighbour is at distance 0 are left out. inf when the distances do not
    grow (no dimension to speak of: every image equally far from all)."""
    n, k = dist.shape
    if k < 2:
        return float("inf")
    js = np.arange(max(1, k // 2), k)  # 1-based ranks j of the neighbours used
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, k + 1))])
    expected = float(np.sum(harmonic[k - 1] - harmonic[js - 1]))
    far = dist[:, k - 1]
    ok = np.isfinite(far) & (far > 0)
    if not ok.any():
        return float("inf")
    with np.errstate(divide="ignore"):
        logs = np.log(far[ok, None] / dist[ok][:, js - 1]).sum(axis=1)
    with np.errstate(divide="ignore"):
        per_image = np.where(logs > 0, expected / logs, np.inf)
    return float(np.median(per_image))


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


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


# ---------------------------------------------------------------- the 2-D map

MAP_FILE = "embedding_map.npz"


def embeddings_stamp(run_id: int) -> str:
    """The run's embeddings file as it is now (size, modification time): what the cached map is keyed on."""
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
    source = embeddings_stamp(run_id)
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
