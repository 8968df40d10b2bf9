"""The `aivh` command. Every subcommand takes --json and then prints one JSON object last.

One module per family of subcommands, each with its handlers and the parsers for them:
data (import, evalset, labels), runs (train, audit, runs, compare), outputs (predict,
export, saliency, bench), review (shortcuts, shift,
robustness), serve (serve, demo), sweeps (sweep); shared holds the flags and output rule they share.
"""
from __future__ import annotations

import argparse
import sys

from engine.cli import data, neighbours, outputs, review, runs, serve, sweeps
from engine.cli.shared import check_store, json_parent, training_parent
from engine.errors import Reported, UsageError, say


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aivh", description="Review lab for AI-generated image detectors.")
    sub = p.add_subparsers(dest="command", required=True)
    common = json_parent()
    data.add_parsers(sub, common)
    runs.add_parsers(sub, common, training_parent())
    outputs.add_parsers(sub, common)
    review.add_parsers(sub, common)
    serve.add_parsers(sub, common)
    neighbours.add_parsers(sub, common)
    sweeps.add_parsers(sub, common, training_parent())
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # CsvError, ExportRefused and WeightsError are ValueErrors: no heavy imports needed here
    known = (UsageError, LookupError, FileNotFoundError, ValueError, PermissionError,
             RuntimeError)
    try:
        check_store(args)
        args.func(args)
    except Reported:
        return 1
    except known as e:
        say(e)
        return 1
    except KeyboardInterrupt:
        print("aivh: interrupted", file=sys.stderr)
        return 130
    return 0
