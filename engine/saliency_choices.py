"""Saliency method and baseline names, importable without torch (the CLI's --help lists them)."""

METHODS = ("saliency", "integrated_gradients", "smoothgrad", "gradcam", "occlusion")
BASELINES = ("mean", "black", "blur")
