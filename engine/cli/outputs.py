"""`aivh predict`, `aivh export`, `aivh saliency`, `aivh bench`: what a trained run produces."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from db.store import session_factory
from engine.choices import BASELINES, DECODES, METHODS, PREDICT_SPLITS
from engine.cli.shared import emit
from engine.errors import UsageError


def cmd_predict(args) -> None:
    from engine.device import require
    from engine.predict import predict_run

    require(args.device)  # one line before the checkpoint is read
    result = predict_run(session_factory(), args.run, args.split, batch_size=args.batch_size,
                         device=args.device, workers=args.workers, progress=not args.json,
                         decode=args.decode)
    for msg in result.pop("skipped_files"):
        print(f"skipped {msg}", file=sys.stderr)
    made_by = f"epoch {result['epoch']} checkpoint" if result["epoch"] is not None else "checkpoint"
    emit(args, result, f"run {args.run}: {result['images']} {args.split} predictions by its {made_by} "
          f"(sha1 {result['checkpoint_sha1'][:12]}) stored in {result['seconds']} s ({result['skipped']} skipped)")


def cmd_export(args) -> None:
    from engine.export import export_run
    from engine.thresholds import fmt_threshold

    result = export_run(session_factory(), args.run, Path(args.out), args.threshold,
                        allow_stale=args.allow_stale_predictions)
    for line in ([result["override"]] if result["override"] else []) + result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    emit(args, result, f"wrote {result['rows']} rows to {result['path']} (threshold "
          f"{fmt_threshold(result['threshold'])} [{result['threshold_source']}], {result['positive_rate']:.1%} AI)")


def cmd_saliency(args) -> None:
    from engine import saliency
    from engine.run_saliency import explain_run_image

    settings = saliency.Settings(args.method, steps=args.steps, baseline=args.baseline,
                                 samples=args.samples)
    t0 = time.perf_counter()
    att, _ = explain_run_image(session_factory(), args.run, args.image.strip(), settings)
    seconds = time.perf_counter() - t0
    out = saliency.render(att, Path(args.out), opacity=args.opacity)
    payload = {"run": args.run, "image": args.image, "method": args.method, "prob": round(att.prob, 6),
               "settings": dataclasses.asdict(settings), "delta": att.delta,
               "mass": saliency.mass_summary(att.map), "seconds": round(seconds, 3), "path": str(out)}
    emit(args, payload, f"{args.image}: p(AI) = {att.prob:.4f}; {args.method} map written to {out} "
          f"(image | overlay | heatmap) in {seconds:.2f} s")


def cmd_bench(args) -> None:
    from engine.backbones import spec
    from engine.bench import run_bench, run_epoch

    if args.img_size is None:  # the architecture's native size, as `aivh train` takes it
        args.img_size = spec(args.arch).img_size
    data = Path(args.data).expanduser() if args.data else None
    if args.epoch_only and not args.epoch:
        raise UsageError("--epoch-only needs --epoch N")
    out = {} if args.epoch_only else run_bench(
        device=args.device, img_size=args.img_size, batch_size=args.batch_size, compile=args.compile,
        steps=args.steps, workers=args.workers, data_dir=data, progress=not args.json, decode=args.decode,
        arch=args.arch)
    if args.epoch:
        out |= run_epoch(args.epoch, device=args.device, img_size=args.img_size, batch_size=args.batch_size,
                         compile=args.compile, workers=args.workers, decode=args.decode,
                         data_dir=data and data.with_name(f"{data.name}-{args.epoch}"), progress=not args.json,
                         arch=args.arch)
    parts = []
    if not args.epoch_only:
        parts.append(f"train {out['train_e2e_img_s']} / {out['train_model_img_s']} img/s (ratio {out['train_ratio']:.3f}); "
                     f"predict {out['predict_e2e_img_s']} / {out['predict_model_img_s']} img/s (ratio "
                     f"{out['predict_ratio']:.3f}); peak host memory {out['peak_host_mem_gb']} GB"
                     + (f", device {out['peak_device_mem_gb']} GB" if out["peak_device_mem_gb"] is not None else ""))
    if args.epoch:
        parts.append(f"one epoch over {out['epoch_images']:,} images: {out['epoch_seconds']} s "
                     f"({out['epoch_img_s']} training img/s)")
    emit(args, out, "; ".join(parts))


def add_parsers(sub, common) -> None:
    _predict_parser(sub, common)
    _export_parser(sub, common)
    _saliency_parser(sub, common)
    _bench_parser(sub, common)


def _predict_parser(sub, common) -> None:
    c = sub.add_parser("predict", parents=[common], help="store probabilities for a split")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--split", choices=PREDICT_SPLITS, default="test")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--device", default="auto")
    c.add_argument("--workers", type=int)
    c.add_argument("--decode", choices=DECODES, default="auto",
                   help="where JPEGs are decoded: Pillow in the worker processes, or the model's device "
                        "(nvJPEG batch decode on CUDA); auto: device on CUDA")
    c.set_defaults(func=cmd_predict)


def _export_parser(sub, common) -> None:
    c = sub.add_parser("export", parents=[common], help="write a Kaggle submission CSV")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--threshold", type=float,
                   help="default: the run's chosen, else best validation-F1 threshold (refused when degenerate)")
    c.add_argument("--out", default="submission.csv")
    c.add_argument("--allow-stale-predictions", action="store_true",
                   help="export even when the test predictions do not come from the run's best checkpoint "
                        "(recorded with the export)")
    c.set_defaults(func=cmd_export)


def _saliency_parser(sub, common) -> None:
    c = sub.add_parser("saliency", parents=[common], help="why the model called an image AI-generated")
    c.add_argument("--run", type=int, required=True)
    c.add_argument("--image", required=True, help="the image's name as in the CSV")
    c.add_argument("--method", choices=METHODS, required=True)
    c.add_argument("--out", required=True, help="PNG: image | overlay | heatmap")
    c.add_argument("--steps", type=int, default=32, help="integrated gradients: path steps")
    c.add_argument("--baseline", choices=BASELINES, default="mean", help="integrated gradients baseline")
    c.add_argument("--samples", type=int, default=16, help="smoothgrad: noisy copies")
    c.add_argument("--opacity", type=float, default=0.5, help="heatmap opacity over the image")
    c.set_defaults(func=cmd_saliency)


def _bench_parser(sub, common) -> None:
    c = sub.add_parser("bench", parents=[common], help="data path vs model-only speed, in one process")
    c.add_argument("--arch", default="efficientnet_b3", help="(efficientnet_b3) or any timm model name")
    c.add_argument("--device", default="auto")
    c.add_argument("--img-size", type=int, help="(the architecture's native size: 300 for B3, 224 for Lite0)")
    c.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 32 on the CPU")
    c.add_argument("--compile", action="store_true", help="torch.compile the model")
    c.add_argument("--steps", type=int, help="timed training batches per measurement (default: 30 CUDA, 6 CPU); "
                                             "prediction times 3x as many")
    c.add_argument("--workers", type=int, help="decoding processes (default: half the cores up to 4 on the "
                                               "CPU, all cores but one up to 16 with a GPU)")
    c.add_argument("--decode", choices=DECODES, default="auto",
                   help="JPEG decode: Pillow in the workers, or the device (nvJPEG on CUDA); auto: device "
                        "for prediction on CUDA, workers for training")
    c.add_argument("--epoch", type=int, metavar="N",
                   help="also time one full training epoch (trainer, validation included) over N generated "
                        "Kaggle-sized images, e.g. 80000")
    c.add_argument("--epoch-only", action="store_true", help="with --epoch: time the epoch alone, no bench phases")
    c.add_argument("--data", help="where the generated Kaggle-sized JPEGs are cached "
                                  "(default ~/.cache/aivh/bench-data)")
    c.set_defaults(func=cmd_bench)
