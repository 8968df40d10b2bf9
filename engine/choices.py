"""Every enumerated choice aivh offers, in one place, importable without torch (the CLI's
--help lists them; the Train page offers them; TrainConfig.problems checks against them).

Run statuses and kinds are the store's own values: the StrEnums RunStatus and RunKind in
db.models. They are not re-exported here, so that this module imports nothing of the store and
pages may use it (tests/test_boundaries.py).
"""
from __future__ import annotations

__all__ = [
           "BASELINES",
           "DECODES",
           "DEVICES",
           "GROUPINGS",
           "JPEG_SCALES",
           "KEEP_EPOCH",
           "METHODS",
           "NEIGHBOUR_SPLITS",
           "PREDICT_SPLITS",
           "PRUNERS",
           "RESIZE_MODES",
           "SPLITS",
           "SWEEP_METRICS",
]

# JPEG decode: Pillow in the loader's workers, or the model's device (nvJPEG on CUDA); auto:
# device for validation and prediction on CUDA, workers for training (engine.loader.resolve_decode)
DECODES = ("auto", "workers", "device")
# how a JPEG is decoded before its resize to the model's size, one rule per run for every path
# that feeds its model (TrainConfig.jpeg_scale, engine.images.load_for_model): "draft", libjpeg's
# DCT scaling to the smallest of 1/2, 1/4, 1/8 still at least that size (fast; every run recorded
# before the choice existed decoded so), or "full" resolution (exact; what nvJPEG does). Crop mode
# always decodes at full resolution (native pixels are its point)
JPEG_SCALES = ("draft", "full")
DEVICES = ("auto", "cpu", "cuda", "mps")  # cuda:N also accepted
RESIZE_MODES = ("resize", "crop")  # the whole image to size, or a size crop at native resolution
# which epoch a run keeps: the best on validation (with early stopping), or the last (audit
# folds: nothing is chosen on the held-out fold's labels)
KEEP_EPOCH = ("best", "last")
PREDICT_SPLITS = ("test", "val", "train", "all")
SPLITS = ("val", "train", "test")  # an image's split; validation first (where review and robustness start)
NEIGHBOUR_SPLITS = ("all", *SPLITS)  # which images `aivh embed` embeds
# what a split (and the audit's folds) keeps together, besides train.csv's group column:
# byte-identical copies, or also near copies by perceptual hash (engine.duplicates.split_groups)
GROUPINGS = ("copies", "near-duplicates")
METHODS = ("saliency", "integrated_gradients", "smoothgrad", "gradcam", "occlusion")  # saliency maps
BASELINES = ("mean", "black", "blur")  # integrated gradients' baseline image
SWEEP_METRICS = ("val_best_f1", "val_auc")  # what `aivh sweep` maximises (engine.sweep)
PRUNERS = ("median", "halving", "none")  # Optuna's median pruner, successive halving, or none
