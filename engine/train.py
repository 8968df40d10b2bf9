"""The training loop: a config and data in, checkpoints and per-epoch metrics out.

It knows nothing of the store: `engine.jobs` ties a run row to it through callbacks.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler
from tqdm import tqdm

from engine import backbones, metrics
from engine.atomic import file_sha1
from engine.checkpoints import BEST_NEXT, promote_checkpoints, stage_checkpoints
from engine.config import TrainConfig
from engine.device import autocast, prepare, resolve_device
from engine.gpu_decode import device_batches
from engine.infer import infer
from engine.loader import make_loader
from engine.metrics import threshold_note
from engine.model import build_model
from engine.precise_bn import bn_sample, recalibrate_bn
from engine.transforms import normalize

log = logging.getLogger("aivh.train")


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


class Callbacks:
    """Override what you need; the trainer calls these and nothing else."""

    def on_batch(self, epoch: int, batch: int, batches: int, images_per_s: float,
                 phase: str = "train") -> None: ...

    def on_epoch(self, result: EpochResult, *, is_best: bool, val_probs: np.ndarray,
                 checkpoint: Path, checkpoint_sha1: str | None = None) -> None:
        """Record the epoch. Called after its checkpoints are staged and before they replace
        last.pt and best.pt (see _end_epoch); checkpoint_sha1 is best.pt's hash when is_best."""

    def after_epoch(self, result: EpochResult) -> None:
        """Called once the epoch is recorded and its checkpoints are in place: may raise (a
        sweep's pruner raises errors.Pruned) to end the run with every epoch kept. One process only."""


def rank_and_world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless a torch.distributed process group is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(cfg: TrainConfig, data: TrainData, out_dir: Path, callbacks: Callbacks | None = None,
          *, resume: Path | None = None, progress: bool = True) -> TrainResult:
    """Train the config's architecture with BCE on one logit; keep last.pt every epoch and best.pt by validation F1.

    Under torch.distributed (DistributedDataParallel, one process per device or CPU share),
    each rank trains on its 1/world shard with cfg.batch_size images per step (BatchNorm sees
    the batches it sees in one process; the global batch is world x batch_size, so an epoch
    has 1/world of the steps); rank 0 alone re-estimates BatchNorm, validates, writes
    checkpoints and calls the callbacks, and tells the others whether to stop.
    """
    rank, world = rank_and_world()
    cb = callbacks or Callbacks()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":  # each rank set its GPU (torch.cuda.set_device)
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed)
    model = prepare(build_model(None if resume else cfg.pretrained, cfg.arch), device)
    norm = (cfg.mean, cfg.std)
    loader_args = {"size": cfg.img_size, "batch_size": cfg.batch_size, "workers": cfg.workers,
                   "device": device, "mode": cfg.resize_mode, "seed": cfg.seed, "decode": cfg.decode,
                   "stamps": data.stamps, "min_scale": cfg.aug_min_scale,
                   "jpeg_scale": cfg.jpeg_scale}
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
        start, bad_epochs = _restore(resume, model, opt, sched, result, cfg.keep_epoch, world)
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # frozen epochs leave the backbone without gradients: DDP must expect unused parameters
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=cfg.freeze_epochs > 0)
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
        frozen = _freeze_backbone(model, epoch <= cfg.freeze_epochs)
        if frozen:
            log.info("epoch %d/%d: backbone frozen, training the head only", epoch, cfg.epochs)
        train_loss, seen, skipped = _train_epoch(step_model, train_loader, opt, sched, loss_fn,
                                                 device, epoch, cfg.epochs, cb, progress and rank == 0, norm)
        stop = False
        if rank == 0:
            recalibrate_bn(model, bn_loader, device, norm)  # the eager module: no recompiles for BN mode
            probs, val_loss, val_skipped = _validate(eval_model, val_loader, device, val_y, loss_fn, norm,
                                                     lambda b, n, e=epoch: cb.on_batch(e, b, n, 0.0, "val"))
            er = epoch_result(epoch, train_loss, val_loss, val_y, probs, sched.get_last_lr()[0],
                               seen * world, time.perf_counter() - t0, skipped + val_skipped)
            result.history.append(er)
            is_best = cfg.keep_epoch == "last" or result.best is None or epoch_score(er) > epoch_score(result.best)
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
            cb.after_epoch(er)
            # never stop while the backbone is still frozen: the run would end before it trained
            stop = cfg.keep_epoch != "last" and bad_epochs >= cfg.patience and epoch > cfg.freeze_epochs
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


def _end_epoch(out_dir: Path, model, opt, sched, cfg: TrainConfig, result: TrainResult, epoch: int,
               bad_epochs: int, world: int, cb: Callbacks, er: EpochResult, *, is_best: bool,
               probs: np.ndarray) -> None:
    stage_checkpoints(out_dir, model, opt, sched, cfg, result, epoch, bad_epochs, world, is_best=is_best)
    sha1 = file_sha1(out_dir / BEST_NEXT) if is_best else None
    cb.on_epoch(er, is_best=is_best, val_probs=probs, checkpoint=out_dir / "best.pt", checkpoint_sha1=sha1)
    promote_checkpoints(out_dir)


def epoch_result(epoch, train_loss, val_loss, val_y, probs, lr, seen, seconds, skipped) -> EpochResult:
    keep = ~np.isnan(probs)  # undecodable validation images are left out of the metrics
    s = metrics.summary(val_y[keep], probs[keep]) if keep.any() else {}
    # one class (or none) in validation: every cut scores the same F1, no threshold is chosen
    threshold = s.get("best_threshold", 0.5) if threshold_note(val_y, probs) is None else float("nan")
    return EpochResult(epoch, train_loss, val_loss, s.get("f1", 0.0), s.get("best_f1", 0.0),
                       threshold, s.get("auc", float("nan")), lr,
                       seen / max(seconds, 1e-9), seconds, skipped)


def epoch_score(e: EpochResult) -> tuple[float, float, float]:
    """Best checkpoint by validation F1 (at its best threshold), ties broken by AUC, then by
    the lower validation loss: once F1 and AUC saturate (an easy or small validation set),
    the first perfect epoch is not the best one, the most confident is."""
    return (e.val_best_f1, -1.0 if np.isnan(e.val_auc) else e.val_auc,
            -np.inf if np.isnan(e.val_loss) else -e.val_loss)


def _restore(path: Path, model, opt, sched, result: TrainResult, keep_epoch: str,
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
    pick = (lambda h: h[-1] if h else None) if keep_epoch == "last" else (
        lambda h: max(h, key=epoch_score, default=None))
    result.best = pick(result.history)
    result.best_val_probs = state["best_val_probs"].numpy()
    result.checkpoint = path.parent / "best.pt"
    return state["epoch"] + 1, state["bad_epochs"]


def _freeze_backbone(model: nn.Module, frozen: bool) -> bool:
    """--freeze-epochs: hold every weight but the head's still (no gradient, so AdamW leaves it,
    weight decay included) or let them train again. BatchNorm statistics keep adapting."""
    for p in backbones.backbone_parameters(model):
        p.requires_grad_(not frozen)
    return frozen


def train_step(model, x, y, opt, loss_fn, device, norm=None) -> torch.Tensor:
    """One optimisation step on a uint8 batch: normalise on the device, bf16 autocast on CUDA."""
    x = normalize(x, device, channels_last=device.type == "cuda", norm=norm)  # (B, 3, S, S)
    y = y.to(device, non_blocking=True)
    with autocast(device):
        logits = model(x).squeeze(1)  # (B,)
    loss = loss_fn(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _train_epoch(model, loader, opt, sched, loss_fn, device, epoch, epochs, cb, progress, norm=None):
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
            loss = train_step(model, x, y, opt, loss_fn, device, norm)
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


def _validate(model, loader, device, val_y, loss_fn, norm, on_batch) -> tuple[np.ndarray, float, int]:
    """Probabilities aligned with the validation list; undecodable images get NaN."""
    logits = torch.full((len(val_y),), float("nan"))
    skipped = 0
    for b, (idx, out, failed) in enumerate(infer(model, loader, device, norm=norm), 1):
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
