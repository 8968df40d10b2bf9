"""`aivh embed`, `aivh duplicates`: a run's embeddings, exact and near copies, leaky splits."""
from __future__ import annotations

import sys

from db.store import session_factory
from engine.choices import NEIGHBOUR_SPLITS
from engine.cli.shared import emit
from engine.errors import UsageError


def cmd_embed(args) -> None:
    from engine.neighbours import embed_run

    result = embed_run(session_factory(), args.run, args.split, batch_size=args.batch_size,
                       device=args.device, workers=args.workers, progress=not args.json)
    for msg in result["skipped_files"]:
        print(f"skipped {msg}", file=sys.stderr)
    emit(args, result, f"run {args.run}: {result['images']} {args.split} images embedded ({result['dim']} "
          f"float16 each) in {result['seconds']} s -> {result['path']}")


def cmd_duplicates(args) -> None:
    from engine.duplicates import find_duplicates

    if not 0 <= args.max_bits <= 16:
        raise UsageError(f"--max-bits {args.max_bits}: give 0 to 16 (of 64 bits; copies are within 6)")
    if not 0 < args.min_cosine <= 1:
        raise UsageError(f"--min-cosine {args.min_cosine}: give a similarity in (0, 1]")
    if args.embedding_ratio is not None and not args.embedding_ratio > 0:
        raise UsageError(f"--embedding-ratio {args.embedding_ratio}: give a ratio above 0 (of both images' distance "
                         "to their 32nd nearest other image)")
    if args.show < 0:
        raise UsageError("--show takes 0 or more pairs")
    result = find_duplicates(session_factory(), args.dataset, args.run, max_bits=args.max_bits,
                             min_cosine=args.min_cosine, embedding_ratio=args.embedding_ratio,
                             progress=not args.json)
    lines = [f"{result['images']} images, {len(result['pairs'])} pairs of copies in {result['clusters']} "
             f"clusters (largest {result['largest_cluster']}); by match: "
             + ", ".join(f"{k} {v}" for k, v in result["matches"].items())]
    lines += [f"  {k:<15} {v}" for k, v in result["counts"].items()]
    lines += [f"note: {n}" for n in result["notes"]] + [f"warning: {w}" for w in result["warnings"]]
    shown = result["pairs"][:args.show]
    lines += [f"  {p['kind']:<15} {p['match']:<9} {p['distance']:<8g} {p['a']}  {p['b']}" for p in shown]
    if len(result["pairs"]) > len(shown):
        lines.append(f"  ... {len(result['pairs']) - len(shown)} more (--json for all)")
    emit(args, result, "\n".join(lines))


def add_parsers(sub, common) -> None:
    _embed_parser(sub, common)
    _duplicates_parser(sub, common)


def _embed_parser(sub, common) -> None:
    c = sub.add_parser("embed", parents=[common],
                       help="store each image's pooled feature vector from a run's checkpoint (float16)")
    c.add_argument("--run", type=int, required=True, help="a trained or probe run (a probe: pretrained features)")
    c.add_argument("--split", default="all", choices=NEIGHBOUR_SPLITS, help="(%(default)s)")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    c.add_argument("--workers", type=int, help="decoding processes (the run's)")
    c.set_defaults(func=cmd_embed)


def _duplicates_parser(sub, common) -> None:
    from engine.duplicates import PHASH_MAX
    from engine.neighbours import COSINE_MIN

    c = sub.add_parser("duplicates", parents=[common],
                       help="exact and near copies: train-train, train-val leaks, train-test, label conflicts")
    c.add_argument("--dataset", required=True)
    c.add_argument("--run", type=int, help="also compare this run's embeddings (aivh embed) and find train-val leaks")
    c.add_argument("--max-bits", type=int, default=PHASH_MAX,
                   help="perceptual-hash distance of a near copy, bits of 64 (%(default)s)")
    c.add_argument("--min-cosine", type=float, default=COSINE_MIN,
                   help="embedding similarity of a near copy, at least (%(default)s); the run's own scale "
                        "can tighten it (a pair must also be far nearer than each image's 32nd nearest other image)")
    c.add_argument("--embedding-ratio", type=float, metavar="R",
                   help="a pair by embedding must be under R of both images' distance to their 32nd nearest "
                        "other image (default: set from the run's embeddings, at most 0.5; the pairs it left out "
                        "are in --json's embedding_left_out, each with its ratio)")
    c.add_argument("--show", type=int, default=20, help="pairs printed without --json (%(default)s)")
    c.set_defaults(func=cmd_duplicates)
