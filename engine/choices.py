"""Every enumerated choice aivh offers, in one place, importable without torch (the CLI's
--help lists them; the Train page offers them; TrainConfig.problems checks against them).

Run statuses and kinds are the store's own values (db.models), named here too.
"""
from __future__ import annotations

from db.models import RunKind, RunStatus

__all__ = [
           "BASELINES",
           "DECODES",
           "DEVICES",
           "KEEP_EPOCH",
           "METHODS",
           "PREDICT_SPLITS",
           "PRUNERS",
           "RESIZE_MODES",
           "SWEEP_METRICS",
           "RunKind",
           "RunStatus",
]

# JPEG decode: Pillow in the loader's workers, or the model's device (nvJPEG on CUDA); auto:
# device for validation and prediction on CUDA, workers for training (engine.loader.resolve_decode)
DECODES = ("auto", "workers", "device")
DEVICES = ("auto", "cpu", "cuda", "mps")  # cuda:N also accepted
RESIZE_MODES = ("resize", "crop")  # the whole image to size, or a size crop at native resolution
# which epoch a run keeps: the best on validation (with early stopping), or the last (audit
# folds: nothing is chosen on the held-out fold's labels)
KEEP_EPOCH = ("best", "last")
PREDICT_SPLITS = ("test", "val", "train", "all")
METHODS = ("saliency", "integrated_gradients", "smoothgrad", "gradcam", "occlusion")  # saliency maps
BASELINES = ("mean", "black", "blur")  # integrated gradients' baseline image
SWEEP_METRICS = ("val_best_f1", "val_auc")  # what `aivh sweep` maximises (engine.sweep)
PRUNERS = ("median", "halving", "none")  # Optuna's median pruner, successive halving, or none
