"""`aivh train --nproc 2` and `torchrun ... aivh train`: DistributedDataParallel on the CPU with
gloo, two processes."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from db import queries
from db.store import session_factory
from tests.conftest import aivh, write_kaggle


def _tinted(root, n: int = 160):
    """Noise images whose class is a red or a blue tint: learnable in a few epochs from scratch."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        arr = rng.integers(0, 256, (32, 32, 3)).astype(np.float32)
        arr[..., 0 if i % 2 else 2] += 90
        name = f"train_data/{i:04d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / name, quality=95)
        rows.append((name, i % 2))
    return write_kaggle(root, rows, [])


def test_two_gloo_processes_train_like_one_and_only_rank_0_writes(workspace, tmp_path):
    aivh("import", str(_tinted(tmp_path / "tint")), "--name", "tint", env_home=workspace)
    common = ["train", "--dataset", "tint", "--epochs", "5", "--img-size", "32", "--lr", "2e-3", "--workers",
              "0", "--val-fraction", "0.25", "--patience", "5", "--seed", "2", "--device", "cpu", "--json"]
    # the same global batch: one process of 32, or two of 16 with gradients averaged by DDP
    single = json.loads(aivh(*common, "--batch-size", "32", env_home=workspace).stdout.splitlines()[-1])
    ddp = json.loads(aivh(*common, "--batch-size", "16", "--nproc", "2", env_home=workspace).stdout.splitlines()[-1])
    assert single["status"] == ddp["status"] == "succeeded"
    # Spread over --seed (benchmarks/seed_spread.py ddp; 2026-12-04, 2-core x86 CPU, loaded), seeds
    # 0-4: single 0.710 / 0.950 / 1.000 (min / median / max), two processes 0.745 / 0.902 / 0.993,
    # |difference| 0.007 / 0.108 / 0.205. These short from-scratch trainings on 40 validation
    # images vary widely by seed (the 0.85 floors held at seed 2 and failed at seeds 0, 3 and 4),
    # so the floors only say both learned something: 0.62 (0.09 below the worst seed; chance is
    # 0.5) and a difference within 0.30 (0.095 above the largest).
    assert ddp["val_auc"] >= 0.62 and single["val_auc"] >= 0.62, (single, ddp)
    assert abs(ddp["val_auc"] - single["val_auc"]) <= 0.30, (single, ddp)
    with session_factory()() as s:
        epochs = queries.epochs(s, ddp["run"])
        assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5]  # one writer: no duplicate epochs
        run = queries.get_run(s, ddp["run"])
        assert run.status == "succeeded" and run.pid is None
        assert len(queries.predictions(s, ddp["run"])) == len(queries.run_image_ids(s, ddp["run"], "val"))
    log = (workspace / "runs" / str(ddp["run"]) / "log.txt").read_text()
    assert log.count(" started on ") == 1 and log.count("epoch 5/5") == 1
    assert (workspace / "runs" / str(ddp["run"]) / "best.pt").is_file()


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")


def test_torchrun_launch_makes_one_run_written_by_rank_0(workspace, tmp_path):
    aivh("import", str(_tinted(tmp_path / "tint")), "--name", "tint", env_home=workspace)
    proc = aivh("train", "--dataset", "tint", "--epochs", "3", "--img-size", "32", "--lr", "2e-3",
                "--workers", "0", "--val-fraction", "0.25", "--patience", "3", "--seed", "2",
                "--device", "cpu", "--batch-size", "16", "--json", env_home=workspace, launcher=TORCHRUN)
    payloads = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(payloads) == 1 and payloads[0]["status"] == "succeeded", proc.stdout  # rank 0 reports
    # torchrun, 3 epochs, over --seed 0-4 (seed_spread.py ddp, 2026-12-04, 2-core x86 CPU): 0.637 /
    # 0.838 / 0.945 (min / median / max); 0.85 held at seed 2 only by chance. Floor 0.55: 0.087
    # below the worst seed, above chance (0.5) only: it catches a run that learned nothing.
    assert payloads[0]["val_auc"] >= 0.55, payloads
    with session_factory()() as s:
        assert [r.id for r in queries.list_runs(s)] == [payloads[0]["run"]]  # one run, not one per process
        assert [e.epoch for e in queries.epochs(s, payloads[0]["run"])] == [1, 2, 3]
    log = (workspace / "runs" / str(payloads[0]["run"]) / "log.txt").read_text()
    assert log.count(" started on ") == 1 and log.count("epoch 3/3") == 1


def test_torchrun_failure_on_rank_0_is_one_clear_error_on_every_rank(workspace, sessions):
    # `sessions` makes the store: without one, every rank stops at "no store" before the run starts
    proc = aivh("train", "--dataset", "nosuch", "--device", "cpu", env_home=workspace,
                launcher=TORCHRUN, check=False, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("aivh: error: no dataset named 'nosuch'") == 1, proc.stderr[-2000:]
    assert "rank 0 could not start the run: no dataset named 'nosuch'" in proc.stderr, proc.stderr[-2000:]
