"""The training progress bar shows the running loss on every refresh, never `loss=nan`."""
from __future__ import annotations

import re

import numpy as np
import tqdm as tqdm_module

import engine.train as train_module
from engine.config import TrainConfig
from engine.train import TrainData, train
from tests.conftest import SAMPLE


def test_the_progress_bar_shows_a_number_for_the_loss(tmp_path, capsys, monkeypatch):
    # every update drawn (mininterval 0), so each batch's postfix reaches the terminal
    def every_update(*args, **kwargs):
        return tqdm_module.tqdm(*args, **{**kwargs, "mininterval": 0, "miniters": 1})

    monkeypatch.setattr(train_module, "tqdm", every_update)
    rows = [line.split(",") for line in (SAMPLE / "train.csv").read_text().splitlines()[1:57]]
    paths, labels = [r[1] for r in rows], [int(r[2]) for r in rows]
    cfg = TrainConfig(epochs=1, img_size=32, batch_size=8, workers=0, bn_batches=1)
    train(cfg, TrainData(SAMPLE, paths[:48], labels[:48], paths[48:], labels[48:]), tmp_path, progress=True)
    shown = re.findall(r"loss=([^,\]\s]+)", capsys.readouterr().err)
    assert len(shown) >= 6, shown  # one per batch at least
    assert all(np.isfinite(float(v)) for v in shown), shown
