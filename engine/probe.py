"""A linear probe: a frozen backbone's pooled features and a logistic regression.

The "UnivFD" recipe of the detection literature (a frozen pretrained backbone, a linear head):
a first honest baseline in seconds, before any training. It is recorded as a run (kind
"probe", or an audit's fold run) like any other: its split, its validation predictions, its
threshold and metrics as epoch 1; its checkpoint is the backbone with the fitted regression
folded into its one-logit head, so `aivh predict`, saliency, export and every dashboard page
work on it unchanged.

Features are computed once per image and kept in the workspace cache, keyed by the file's
content (sha1) and by everything that changes them (architecture, weights, image size, resize
mode, normalisation): a second probe, or an audit's k folds, reads them back.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit  # the logistic function, without overflow warnings
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from db import queries
from db import runs as owners
from db.models import Dataset, Run, RunKind
from db.store import home, run_dir, session_factory
from engine import atomic, jobs
from engine.atomic import file_sha1
from engine.backbones import head
from engine.checkpoints import save_atomic
from engine.config import TrainConfig
from engine.device import resolve_device
from engine.duplicates import split_groups
from engine.errors import Cancelled, WeightsError
from engine.folds import codes, group_folds
from engine.infer import embed
from engine.liveness import Heartbeat
from engine.loader import make_loader
from engine.model import build_model
from engine.processes import this_process
from engine.recording import StoreCallbacks
from engine.train import epoch_result

log = logging.getLogger("aivh.probe")
CS = np.logspace(-3, 2, 11)  # inverse regularisation strengths tried by 5-fold cross-validation (fit_head)


def create_probe(s: Session, dataset: Dataset, cfg: TrainConfig) -> Run:
    """A queued probe run (its split drawn as a training run's would be)."""
    run = jobs.create_run(s, dataset, dataclasses.replace(cfg, probe=True))
    run.kind = RunKind.PROBE.value
    return run


def feature_space(cfg: TrainConfig, device_type: str = "cpu") -> str:
    """Names everything that changes an image's features: the cache file's name. Random
    weights depend on the seed; CUDA computes in bf16, the CPU in fp32. The JPEG rule: named
    unless it is draft off CUDA, the one decode every key made before the rule stood for
    (on CUDA, nvJPEG decoded the JPEGs draft now leaves to Pillow)."""
    named = cfg.jpeg_scale != "draft" or device_type == "cuda"
    key = json.dumps([cfg.arch, cfg.weights_source, cfg.img_size, cfg.resize_mode, list(cfg.mean),
                      list(cfg.std), cfg.seed if cfg.pretrained is None else None, device_type]
                     + ([cfg.jpeg_scale] if named else []), sort_keys=True)
    return f"{cfg.arch}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def cached_features(model, cfg: TrainConfig, root: Path, paths: list[str], keys: list[str], *,
                    device: torch.device, batch_size: int = 64, stamps=None, progress: bool = True,
                    ) -> tuple[np.ndarray, int]:
    """(N, F) float32 features of `paths` (NaN rows: images that failed to decode), and how many
    were computed now rather than read from the cache."""
    file = home() / "cache" / "features" / f"{feature_space(cfg, device.type)}.npz"
    known: dict[str, np.ndarray] = {}
    if file.is_file():
        with np.load(file, allow_pickle=False) as saved:
            known = dict(zip(saved["keys"].tolist(), saved["feats"]))
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        loader = make_loader(root, [paths[i] for i in todo], None, size=cfg.img_size, batch_size=batch_size,
                             workers=cfg.workers, device=device, mode=cfg.resize_mode, decode=cfg.decode,
                             stamps=stamps, jpeg_scale=cfg.jpeg_scale)
        bar = tqdm(total=len(todo), desc="features", unit="img", disable=not progress, mininterval=0.5)
        for idx, feats, failed in embed(model, loader, device, norm=(cfg.mean, cfg.std)):
            for pos, f in zip(idx.tolist(), feats.numpy()):
                known[keys[todo[pos]]] = f
            for _pos, msg in failed:
                log.warning("skipped %s", msg)
            bar.update(len(idx) + len(failed))
        bar.close()
        if not known:
            raise ValueError(f"no image could be decoded for the probe ({len(todo)} tried; see the skipped lines)")
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(file, durable=False) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.array(list(known)), feats=np.stack(list(known.values())).astype(np.float32))
    width = next(iter(known.values())).shape[0] if known else 0
    out = np.full((len(keys), width), np.nan, dtype=np.float32)
    for i, k in enumerate(keys):
        if k in known:
            out[i] = known[k]
    return out, len(todo)


def fit_head(x: np.ndarray, y: np.ndarray, seed: int, groups: np.ndarray | None = None,
             ) -> tuple[np.ndarray, float, float]:
    """Standardised logistic regression (lbfgs) with C chosen among CS by 5-fold cross-validation
    on mean log loss, refitted on all rows with a fresh scaler and returned in the raw feature
    space: (weights, bias, C), logit = x @ weights + bias. Folds as engine.folds.group_folds
    (stratified, shuffled with the seed, each group of `groups` held out whole); in each, the
    scaler is fitted on its training part and one regression walks CS upwards warm-started from
    the previous C's solution (scikit-learn's GridSearchCV would fit each C cold: 2.5 times the
    time on 4,000 x 1,280 features, the same C; docs/benchmarks.md)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    from engine.folds import FoldError

    try:
        splits = group_folds(y, groups, 5, seed)
    except FoldError as e:
        raise ValueError(f"the probe cannot choose C on its training images: {e}; label more images "
                         "or check train.csv's group column") from None
    except ValueError:
        raise ValueError("a probe needs at least 2 decodable training images of each class "
                         "(not copies of one another)") from None
    losses = np.zeros(len(CS))
    for fit, held in splits:
        scaler = StandardScaler().fit(x[fit])
        x_fit, x_held = scaler.transform(x[fit]), scaler.transform(x[held])
        lr = LogisticRegression(max_iter=5000, warm_start=True)
        for k, c in enumerate(np.sort(CS)):
            lr.set_params(C=c).fit(x_fit, y[fit])
            losses[k] += log_loss(y[held], lr.predict_proba(x_held), labels=lr.classes_)
    c = float(np.sort(CS)[int(np.argmin(losses))])  # ties: the smaller C, as GridSearchCV's first best
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), y)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = lr.coef_[0] / scale
    b = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scale))
    return w.astype(np.float32), b, c


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    keep = ~np.isnan(p)
    q = np.clip(p[keep], 1e-7, 1 - 1e-7)
    return float(-np.mean(y[keep] * np.log(q) + (1 - y[keep]) * np.log(1 - q))) if keep.any() else float("nan")


def execute_probe(run_id: int, *, sessions: sessionmaker[Session] | None = None, progress: bool = True) -> Run:
    """Fit the probe of a queued run (kind probe, or an audit fold whose config says probe) and
    record it like a training run's one epoch; returns the finished row."""
    sessions = sessions or session_factory()
    me = this_process()
    with sessions.begin() as s:
        jobs.claim(s, run_id, me, resume=False, world=1)
    handler = logging.FileHandler(run_dir(run_id) / "log.txt")  # the Train page shows its tail
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("aivh").addHandler(handler)
    logging.getLogger("aivh").setLevel(logging.INFO)
    beat = Heartbeat(sessions, run_id, me)  # alive to other hosts while features are computed
    beat.start()
    try:
        t0 = time.perf_counter()
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            if run.cancel_requested:  # asked while it was queued: it never starts
                raise Cancelled()
            cfg = TrainConfig.from_dict(run.config).validate()
            data, train_ids, val_ids = jobs.train_data(s, run)
            # C is chosen on folds that keep together what the split keeps together
            grouped, _how = split_groups(s, run.dataset_id, data.root, train_ids, group=cfg.group,
                                         progress=False)
            # a file without a recorded sha1 is keyed by its path: within this dataset only
            keys = {i: k if not k.startswith("path:") else f"dataset {run.dataset_id} {k}"
                    for i, k in queries.content_keys(s, run.dataset_id, None).items()}
            owners.set_if_owner(s, run_id, me, progress={
                "host": me[0], "epoch": 1, "epochs": 1, "phase": "features",
                "train_images": len(train_ids), "val_images": len(val_ids)})
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.pretrained, cfg.arch).to(device).eval()
        keys_used = [keys[i] for i in train_ids + val_ids]
        feats, computed = cached_features(
            model, cfg, data.root, data.train_paths + data.val_paths, keys_used,
            device=device, batch_size=cfg.batch_size, stamps=data.stamps, progress=progress)
        x_train, x_val = feats[:len(train_ids)], feats[len(train_ids):]
        y_train, y_val = np.asarray(data.train_labels), np.asarray(data.val_labels)
        ok = ~np.isnan(x_train).any(axis=1)
        w, b, c = fit_head(x_train[ok], y_train[ok], cfg.seed,
                           codes([grouped[i] for i, keep in zip(train_ids, ok) if keep]))
        train_p = expit(x_train[ok] @ w + b)
        val_p = np.full(len(val_ids), np.nan)
        good = ~np.isnan(x_val).any(axis=1)
        val_p[good] = expit(x_val[good] @ w + b)
        seconds = time.perf_counter() - t0
        skipped = int((~ok).sum() + (~good).sum())
        er = epoch_result(1, _bce(y_train[ok], train_p), _bce(y_val, val_p), y_val, val_p, 0.0,
                           int(ok.sum()), seconds, skipped)  # no learning rate (0): C is in the progress
        fc = head(model)
        with torch.no_grad():
            fc.weight.copy_(torch.from_numpy(w).view(1, -1))
            fc.bias.fill_(b)
        out = run_dir(run_id)
        save_atomic({"model": model.cpu().state_dict(), "config": cfg.to_dict(), "epoch": 1,
                     "probe": {"C": c, "features_computed": computed}}, out / "best.pt")
        log.info("probe run %d: %d train / %d val images (%d features computed, the rest cached), C=%.3g, "
                 "val F1@0.5 %.4f best F1 %.4f AUC %.4f in %.1f s", run_id, len(train_ids), len(val_ids),
                 computed, c, er.val_f1, er.val_best_f1, er.val_auc, seconds)
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            owners.set_if_owner(s, run_id, me, progress={
                **(run.progress or {}), "phase": "done", "features_computed": computed,
                "features_cached": len(keys_used) - computed, "C": c})
        StoreCallbacks(sessions, run_id, val_ids, data.val_labels, me).on_epoch(
            er, is_best=True, val_probs=val_p, checkpoint=out / "best.pt", checkpoint_sha1=file_sha1(out / "best.pt"))
        return jobs.finish(sessions, run_id, me, "succeeded")
    except Cancelled:
        log.info("probe run %d cancelled", run_id)
        return jobs.finish(sessions, run_id, me, "cancelled")
    except WeightsError as e:  # unusable starting weights: one line, no traceback
        log.error("probe run %d failed: %s", run_id, e)
        jobs.finish(sessions, run_id, me, "failed", f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:
        log.exception("probe run %d failed", run_id)
        jobs.finish(sessions, run_id, me, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        beat.stop()
        logging.getLogger("aivh").removeHandler(handler)
        handler.close()
