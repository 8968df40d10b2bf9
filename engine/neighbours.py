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
NEIGHBOURS = 10  # nearest neighbours searched per image by embedding
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
