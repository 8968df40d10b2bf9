"""The training loop: a config and data in, checkpoints and per-epoch metrics out.

It knows nothing of the store: `engine.jobs` ties a run row to it through callbacks.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler
from tqdm import tqdm

from engine import metrics
from engine.atomic import atomic_path
from engine.data import normalize
from engine.model import build_model
from engine.predict import (
    DECODES,
    autocast,
    default_workers,
    device_batches,
    infer,
    make_loader,
    prepare,
    resolve_device,
)

log = logging.getLogger("aivh.train")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12  # upper bound; early stopping usually ends sooner
    img_size: int = 300  # B3's native resolution
    batch_size: int = 32  # fits B3 at 300 px on a 16 GB GPU in bf16
    lr: float = 1e-3  # OneCycle peak for AdamW
    weight_decay: float = 1e-2  # AdamW's default decoupled decay
    val_fraction: float = 0.1  # share of each class held out, by stable hash
    seed: int = 0  # model init, split, shuffling and augmentation
    device: str = "auto"  # auto picks CUDA when present
    limit: int | None = None  # train on a stratified subset of this many images
    pretrained: str | None = None  # None, "imagenet" or a local state-dict path
    workers: int = field(default_factory=default_workers)  # decoding processes
    compile: bool = False  # torch.compile the model (CUDA; fixed shapes)
    resize_mode: str = "resize"  # resize the whole image, or "crop" at native resolution
    patience: int = 3  # epochs without a better validation epoch (F1, AUC, loss) before stopping
    bn_batches: int = 20  # training batches that re-estimate BatchNorm statistics before validation
    # "best": keep the epoch with the best validation F1 and stop early; "last": keep the final
    # epoch and run them all (audit folds: nothing is chosen on the held-out fold's labels)
    select: str = "best"
    # JPEG decode: "workers" (Pillow) or "device" (nvJPEG on CUDA); auto: device for validation
    # on CUDA, workers for training (see engine.predict.resolve_decode)
    decode: str = "auto"

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    def problems(self) -> list[str]:
        """Every reason this config cannot train, one line each (empty when it can): the one
        check shared by `aivh train` and the dashboard's Train page."""
        found = []
        if self.epochs < 1:
            found.append(f"epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            found.append(f"batch size must be at least 1 (got {self.batch_size})")
        if self.img_size < 16:
            found.append(f"image size must be at least 16 px (got {self.img_size})")
        if not self.lr > 0:
            found.append(f"learning rate must be above 0 (got {self.lr})")
        if self.weight_decay < 0:
            found.append(f"weight decay must be 0 or more (got {self.weight_decay})")
        if not 0.0 < self.val_fraction < 1.0:
            found.append(f"validation fraction must be between 0 and 1 (got {self.val_fraction})")
        if self.limit is not None and self.limit < 2:
            found.append(f"limit must be at least 2 images (got {self.limit})")
        if self.workers < 0:
            found.append(f"decoding workers must be 0 or more (got {self.workers})")
        if self.patience < 1:
            found.append(f"patience must be at least 1 epoch (got {self.patience}): with 0, "
                         "training would stop after its first epoch")
        if self.bn_batches < 0:
            found.append(f"precise-BN batches must be 0 or more (got {self.bn_batches})")
        if self.resize_mode not in ("resize", "crop"):
            found.append(f"resize mode must be resize or crop (got {self.resize_mode!r})")
        if self.select not in ("best", "last"):
            found.append(f"select must be best or last (got {self.select!r})")
        if self.decode not in DECODES:
            found.append(f"decode must be one of {', '.join(DECODES)} (got {self.decode!r})")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            found.append(f"device must be auto, cpu or cuda (got {self.device!r})")
        if self.pretrained not in (None, "imagenet") and not Path(self.pretrained).is_file():
            found.append(f"pretrained weights file not found: {self.pretrained}")
        return found


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """The config, or ValueError with its first problem (see TrainConfig.problems)."""
    found = cfg.problems()
    if found:
        raise ValueError(found[0])
    return cfg


@dataclass
class TrainData:
    root: Path
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]
    stamps: dict | None = None  # rel_path -> (bytes, mtime_ns) at import: replaced files are skipped


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_f1: float  # at 0.5
    val_best_f1: float
    val_best_threshold: float
    val_auc: float
    lr: float
    images_per_s: float
    seconds: float
    skipped: int  # images that failed to decode this epoch

    def __post_init__(self) -> None:
        # plain Python numbers: the history goes into a weights_only checkpoint and JSON
        for f in fields(self):
            cast = int if f.name in ("epoch", "skipped") else float
            setattr(self, f.name, cast(getattr(self, f.name)))


@dataclass
class TrainResult:
    best: EpochResult | None
    history: list[EpochResult] = field(default_factory=list)
    best_val_probs: np.ndarray | None = None  # (n_val,) at the best epoch
    checkpoint: Path | None = None


class Cancelled(Exception):
    """Raised by a callback between batches to stop the run."""


class Callbacks:
    """Override what you need; the trainer calls these and nothing else."""

    def on_batch(self, epoch: int, batch: int, batches: int, images_per_s: float,
                 phase: str = "train") -> None: ...

    def on_epoch(self, result: EpochResult, *, is_best: bool, val_probs: np.ndarray,
                 checkpoint: Path, checkpoint_sha1: str | None = None) -> None:
        """Record the epoch. Called after its checkpoints are staged and before they replace
        last.pt and best.pt (see _end_epoch); checkpoint_sha1 is best.pt's hash when is_best."""


def save_atomic(obj: dict, path: Path) -> None:
    """Write then rename: a kill mid-write leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _dist() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless a torch.distributed process group is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(cfg: TrainConfig, data: TrainData, out_dir: Path, callbacks: Callbacks | None = None,
          *, resume: Path | None = None, progress: bool = True) -> TrainResult:
    """Train B3 with BCE on one logit; keep last.pt every epoch and best.pt by validation F1.

    Under torch.distributed (DistributedDataParallel, one process per device or CPU share),
    each rank trains on its 1/world shard with cfg.batch_size images per step (BatchNorm sees
    the batches it sees in one process; the global batch is world x batch_size, so an epoch
    has 1/world of the steps); rank 0 alone re-estimates BatchNorm, validates, writes
    checkpoints and calls the callbacks, and tells the others whether to stop.
    """
    rank, world = _dist()
    cb = callbacks or Callbacks()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":  # each rank set its GPU (torch.cuda.set_device)
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed)
    model = prepare(build_model(None if resume else cfg.pretrained), device)
    loader_args = {"size": cfg.img_size, "batch_size": cfg.batch_size, "workers": cfg.workers,
                   "device": device, "mode": cfg.resize_mode, "seed": cfg.seed, "decode": cfg.decode,
                   "stamps": data.stamps}
    sampler_gen = torch.Generator()
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(range(len(data.train_paths)), num_replicas=world, rank=rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        train_loader = make_loader(data.root, data.train_paths, data.train_labels, train=True,
                                   sampler=sampler, **loader_args)
    else:
        sampler = RandomSampler(range(len(data.train_paths)), generator=sampler_gen)
        train_loader = make_loader(data.root, data.train_paths, data.train_labels, train=True,
                                   sampler=sampler, **loader_args)
    val_loader = make_loader(data.root, data.val_paths, data.val_labels, **loader_args)
    bn_loader = make_loader(data.root, bn_sample(data.train_paths, cfg.bn_batches * cfg.batch_size, cfg.seed),
                            None, **loader_args)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # sized in batches and stepped per batch (the notebook's bug was per-epoch stepping)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * len(train_loader)), pct_start=0.15)
    result = TrainResult(best=None)
    start, bad_epochs = 1, 0
    if resume is not None:
        start, bad_epochs = _restore(resume, model, opt, sched, result, cfg.select, world)
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = torch.compile(wrapped) if cfg.compile else wrapped
    # validation runs the eager module: rank 0 validates alone (no collectives), and a compiled
    # module would compile again for eval mode and for the last, shorter batch mid-epoch
    eval_model = model
    loss_fn = nn.BCEWithLogitsLoss()
    val_y = np.asarray(data.val_labels)
    for epoch in range(start, cfg.epochs + 1):
        sampler_gen.manual_seed(cfg.seed * 100_003 + epoch)  # same order on resume
        if world > 1:
            sampler.set_epoch(epoch)
        train_loader.dataset.epoch = epoch
        t0 = time.perf_counter()
        train_loss, seen, skipped = _train_epoch(step_model, train_loader, opt, sched, loss_fn,
                                                 device, epoch, cfg.epochs, cb, progress and rank == 0)
        stop = False
        if rank == 0:
            _recalibrate_bn(model, bn_loader, device)  # the eager module: no recompiles for BN mode
            probs, val_loss, val_skipped = _validate(eval_model, val_loader, device, val_y, loss_fn,
                                                     lambda b, n, e=epoch: cb.on_batch(e, b, n, 0.0, "val"))
            er = _epoch_result(epoch, train_loss, val_loss, val_y, probs, sched.get_last_lr()[0],
                               seen * world, time.perf_counter() - t0, skipped + val_skipped)
            result.history.append(er)
            is_best = cfg.select == "last" or result.best is None or _rank(er) > _rank(result.best)
            bad_epochs = 0 if is_best else bad_epochs + 1
            if is_best:
                result.best, result.best_val_probs = er, probs
            result.checkpoint = out_dir / "best.pt"
            log.info("epoch %d/%d train_loss %.4f val_loss %.4f f1@0.5 %.4f best_f1 %.4f@%.3f auc %.4f "
                     "%.1f img/s%s", epoch, cfg.epochs, er.train_loss, er.val_loss, er.val_f1,
                     er.val_best_f1, er.val_best_threshold, er.val_auc, er.images_per_s,
                     f" skipped {er.skipped}" if er.skipped else "")
            _end_epoch(out_dir, model, opt, sched, cfg, result, epoch, bad_epochs, world, cb, er,
                       is_best=is_best, probs=probs)
            stop = cfg.select != "last" and bad_epochs >= cfg.patience
            if stop:
                log.info("early stop: no better validation F1 for %d epochs", bad_epochs)
        if world > 1:
            import torch.distributed as dist

            flag = torch.tensor([int(stop)], device=device if device.type == "cuda" else "cpu")
            dist.broadcast(flag, src=0)  # the others wait here while rank 0 validates
            stop = bool(flag.item())
        if stop:
            break
    return result


def bn_sample(paths: list[str], n: int, seed: int) -> list[str]:
    """The training images that re-estimate BatchNorm: a seeded random sample of `n` (in list
    order), not the first `n` of a CSV that may be sorted by class or source."""
    if n >= len(paths):
        return list(paths)
    pick = np.random.default_rng([seed, 0xB4]).choice(len(paths), size=n, replace=False)
    return [paths[i] for i in sorted(pick)]


def threshold_note(val_y: np.ndarray, probs: np.ndarray) -> str | None:
    """Why no validation threshold can be chosen (None when one can): F1 over one class
    is the same at every cut, so any threshold picked would be arbitrary."""
    keep = ~np.isnan(probs)
    y = np.asarray(val_y)[keep]
    if not y.size:
        return "no validation image could be decoded, so no threshold was chosen"
    if not (y == 1).any():
        return (f"validation has no AI-generated (label 1) image among its {y.size}, so no threshold "
                "was chosen; set one (Evaluate page or `aivh export --threshold`)")
    if not (y == 0).any():
        return (f"validation has no human-made (label 0) image among its {y.size}, so no threshold "
                "was chosen; set one (Evaluate page or `aivh export --threshold`)")
    return None


def _epoch_result(epoch, train_loss, val_loss, val_y, probs, lr, seen, seconds, skipped) -> EpochResult:
    keep = ~np.isnan(probs)  # undecodable validation images are left out of the metrics
    s = metrics.summary(val_y[keep], probs[keep]) if keep.any() else {}
    # one class (or none) in validation: every cut scores the same F1, no threshold is chosen
    threshold = s.get("best_threshold", 0.5) if threshold_note(val_y, probs) is None else float("nan")
    return EpochResult(epoch, train_loss, val_loss, s.get("f1", 0.0), s.get("best_f1", 0.0),
                       threshold, s.get("auc", float("nan")), lr,
                       seen / max(seconds, 1e-9), seconds, skipped)


# The end of an epoch writes in this order, so that a kill or an error at any point leaves a
# state `--resume` brings back to one epoch history (recover_checkpoints):
#   1. stage: last.next.pt, then best.next.pt (each written whole, then renamed into place)
#   2. the store records the epoch (cb.on_epoch: one transaction, the commit point)
#   3. promote: best.next.pt -> best.pt, then last.next.pt -> last.pt
# Before the commit the staged files are thrown away on resume; after it they are promoted.
LAST_NEXT, BEST_NEXT = "last.next.pt", "best.next.pt"


def _end_epoch(out_dir: Path, model, opt, sched, cfg: TrainConfig, result: TrainResult, epoch: int,
               bad_epochs: int, world: int, cb: Callbacks, er: EpochResult, *, is_best: bool,
               probs: np.ndarray) -> None:
    _stage_checkpoints(out_dir, model, opt, sched, cfg, result, epoch, bad_epochs, world, is_best=is_best)
    sha1 = file_sha1(out_dir / BEST_NEXT) if is_best else None
    cb.on_epoch(er, is_best=is_best, val_probs=probs, checkpoint=out_dir / "best.pt", checkpoint_sha1=sha1)
    promote_checkpoints(out_dir)


def _stage_checkpoints(out_dir: Path, model, opt, sched, cfg: TrainConfig, result: TrainResult,
                       epoch: int, bad_epochs: int, world: int = 1, *, is_best: bool) -> None:
    """last.next.pt holds everything --resume needs; best.next.pt only what prediction needs."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "epoch": epoch, "bad_epochs": bad_epochs,
             "config": cfg.to_dict(), "history": [asdict(h) for h in result.history],
             "best_val_probs": torch.from_numpy(result.best_val_probs).float(),
             "rng": torch.get_rng_state(), "world_size": world}
    device = next(model.parameters()).device
    if device.type == "cuda":  # the GPU's generator too (dropout, stochastic depth on the device)
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    save_atomic(state, out_dir / LAST_NEXT)
    if is_best:
        save_atomic({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": epoch},
                    out_dir / BEST_NEXT)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def promote_checkpoints(out_dir: Path) -> None:
    """Staged files replace best.pt, then last.pt (a rename each: never a torn file)."""
    for staged, final in ((BEST_NEXT, "best.pt"), (LAST_NEXT, "last.pt")):
        if (out_dir / staged).is_file():
            _rename(out_dir / staged, out_dir / final)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_checkpoints(out_dir: Path, recorded_epochs: set[int]) -> int | None:
    """Finish or undo an end of epoch that a kill or an error interrupted: staged files whose
    epoch the store recorded are promoted, others deleted. Returns last.pt's epoch (None: none)."""
    last_next, best_next = out_dir / LAST_NEXT, out_dir / BEST_NEXT
    if last_next.is_file():
        epoch = int(torch.load(last_next, map_location="cpu", weights_only=True)["epoch"])
        if epoch in recorded_epochs:
            log.info("epoch %d was recorded but its checkpoints not yet in place: promoting them", epoch)
            promote_checkpoints(out_dir)
        else:
            log.info("epoch %d was not recorded: discarding its staged checkpoints", epoch)
            best_next.unlink(missing_ok=True)  # best first: a lone best.next.pt is always discarded
            last_next.unlink()
    else:
        best_next.unlink(missing_ok=True)
    last = out_dir / "last.pt"
    if not last.is_file():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rank(e: EpochResult) -> tuple[float, float, float]:
    """Best checkpoint by validation F1 (at its best threshold), ties broken by AUC, then by
    the lower validation loss: once F1 and AUC saturate (an easy or small validation set),
    the first perfect epoch is not the best one, the most confident is."""
    return (e.val_best_f1, -1.0 if np.isnan(e.val_auc) else e.val_auc,
            -np.inf if np.isnan(e.val_loss) else -e.val_loss)


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, loader, device) -> None:
    """Re-estimate BatchNorm running statistics from training images (precise BN).

    Early in training, and in short runs from scratch, the running averages lag far behind
    the weights and eval-mode outputs collapse to one value; a plain average over a few
    batches with the current weights fixes that. Dropout and stochastic depth stay off.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    model.eval()
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        bn.train()
    for x, _y, _idx, _failed in device_batches(loader, device):
        if x is not None and len(x):
            with autocast(device):
                model(normalize(x, device, channels_last=device.type == "cuda"))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()


def _restore(path: Path, model, opt, sched, result: TrainResult, select: str,
             world: int = 1) -> tuple[int, int]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_world = state.get("world_size")
    if saved_world is not None and saved_world != world:
        raise ValueError(f"{path} was trained by {saved_world} process(es); resume it with "
                         f"{saved_world}, not {world}")
    saved_steps = state["scheduler"].get("total_steps")
    if saved_steps is not None and saved_steps != sched.total_steps:
        raise ValueError(f"{path} was trained with {saved_steps} scheduler steps in all, this setup "
                         f"has {sched.total_steps}: resume with the same process count and config")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    device = next(model.parameters()).device
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    result.history = [EpochResult(**h) for h in state["history"]]
    pick = (lambda h: h[-1] if h else None) if select == "last" else (
        lambda h: max(h, key=_rank, default=None))
    result.best = pick(result.history)
    result.best_val_probs = state["best_val_probs"].numpy()
    result.checkpoint = path.parent / "best.pt"
    return state["epoch"] + 1, state["bad_epochs"]


def train_step(model, x, y, opt, loss_fn, device) -> torch.Tensor:
    """One optimisation step on a uint8 batch: normalise on the device, bf16 autocast on CUDA."""
    x = normalize(x, device, channels_last=device.type == "cuda")  # (B, 3, S, S)
    y = y.to(device, non_blocking=True)
    with autocast(device):
        logits = model(x).squeeze(1)  # (B,)
    loss = loss_fn(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _train_epoch(model, loader, opt, sched, loss_fn, device, epoch, epochs, cb, progress):
    model.train()
    total = torch.zeros((), device=device)  # summed on the device: no host sync per batch
    seen, skipped, shown = 0, 0, float("nan")
    t0 = asked = time.perf_counter()
    on_its_way = None  # (pinned host copy, event, images) of the running loss on a GPU
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not progress,
               leave=False, mininterval=0.5)
    for b, (x, y, _idx, failed) in enumerate(device_batches(loader, device), 1):
        skipped += len(failed)
        for _pos, msg in failed:
            log.warning("skipped %s", msg)
        if x is not None and len(y):
            loss = train_step(model, x, y, opt, loss_fn, device)
            total += loss.float() * y.numel()
            seen += y.numel()
        sched.step()
        now = time.perf_counter()
        if device.type != "cuda":  # nothing to wait for on the CPU
            shown = total.item() / max(seen, 1)
        elif on_its_way is not None and on_its_way[1].query():  # arrived: no host sync, ever
            shown, on_its_way = on_its_way[0].item() / max(on_its_way[2], 1), None
        elif on_its_way is None and (now - asked > 2.0 or b == 1):  # ask again every 2 s
            host = torch.empty((), pin_memory=True)
            host.copy_(total, non_blocking=True)
            arrived = torch.cuda.Event()
            arrived.record()
            on_its_way, asked = (host, arrived, seen), now
        ips = seen / max(now - t0, 1e-9)
        bar.set_postfix(loss=f"{shown:.4f}", img_s=f"{ips:.1f}", refresh=False)
        bar.update()
        cb.on_batch(epoch, b, len(loader), ips)
    return total.item() / max(seen, 1), seen, skipped


def _validate(model, loader, device, val_y, loss_fn, on_batch) -> tuple[np.ndarray, float, int]:
    """Probabilities aligned with the validation list; undecodable images get NaN."""
    logits = torch.full((len(val_y),), float("nan"))
    skipped = 0
    for b, (idx, out, failed) in enumerate(infer(model, loader, device), 1):
        logits[idx] = out
        skipped += len(failed)
        for _pos, msg in failed:  # named in the log as training names its skips
            log.warning("skipped %s (validation)", msg)
        on_batch(b, len(loader))
    ok = ~torch.isnan(logits)
    if not ok.any():
        return np.full(len(val_y), np.nan), float("nan"), skipped
    loss = loss_fn(logits[ok], torch.as_tensor(val_y, dtype=torch.float32)[ok]).item()
    return torch.sigmoid(logits).numpy(), loss, skipped  # NaN stays NaN: metrics skip them
