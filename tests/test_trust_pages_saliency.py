"""Saliency maps shown over the picture the reviewer knows: its own aspect ratio, the map
resized back onto the region the model saw (issue 13, item 18)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine import saliency


class RightHalf(nn.Module):
    """logit = sum of the right half of the model input: every attribution lies there."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        return self.features(x)[..., w // 2:].sum(dim=(1, 2, 3))[:, None] * 1e-3


def wide_photo(path, size=(192, 96)) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG")


def test_render_keeps_the_image_aspect_ratio_and_maps_the_right_half(tmp_path):
    """A 2:1 photo seen as a 32 px square: the rendered panels are 2:1 each, and the map's
    mass lies on the right half of the picture, as it does on the model's input."""
    wide_photo(tmp_path / "wide.jpg")
    att = saliency.explain(RightHalf(), tmp_path / "wide.jpg", 32, saliency.Settings("saliency"))
    assert att.image.shape[:2] == (32, 32)  # what the model saw: squashed
    out = saliency.render(att, tmp_path / "map.png")
    width, height = Image.open(out).size
    assert width == 3 * 2 * height  # image | overlay | heatmap, each at the photo's 2:1
    picture, heat, inside = saliency.on_image(att)
    h, w = picture.shape[:2]
    assert w == 2 * h and heat.shape == (h, w) and inside.all()
    assert heat[:, : w // 2 - 8].sum() == 0 and heat[:, w // 2 + 8:].min() > 0


def test_crop_mode_map_covers_only_the_centre_square(tmp_path):
    """Crop mode sees the centre 32 px square of a 120 x 60 image: the map is put back there;
    the rest of the picture is marked as not seen."""
    wide_photo(tmp_path / "wide.jpg", (120, 60))
    att = saliency.explain(RightHalf(), tmp_path / "wide.jpg", 32, saliency.Settings("saliency"), mode="crop")
    picture, heat, inside = saliency.on_image(att)
    h, w = picture.shape[:2]
    assert w == 2 * h
    ys, xs = np.nonzero(inside)
    scale = w / 120
    assert (xs.min(), xs.max() + 1) == (round(44 * scale), round(76 * scale))
    assert (ys.min(), ys.max() + 1) == (round(14 * scale), round(46 * scale))
    assert heat[~inside].sum() == 0
    panels = saliency.panels(att)
    assert panels.shape == (h, 3 * w, 3)


@pytest.mark.parametrize("size,mode,box", [((640, 480), "resize", (0, 0, 640, 480)),
                                           ((640, 480), "crop", (170, 90, 470, 390)),
                                           ((20, 40), "crop", (0, 10, 20, 30))])
def test_model_box_matches_the_prediction_transform(size, mode, box):
    """The box is where transform() takes its pixels from, in the original image's pixels."""
    assert saliency.model_box(*size, 300 if size[0] > 100 else 30, mode) == pytest.approx(box, abs=0.5)
