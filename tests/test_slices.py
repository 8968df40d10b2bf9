"""Results per slice: every image in one slice per dimension, metrics by hand."""
import pandas as pd
import pytest

from engine.slices import slice_columns, slice_table


def _frame(rows):
    return pd.DataFrame(rows, columns=["prob", "label", "width", "height", "format", "jpeg_quality"])


def test_slices_by_size_aspect_format_and_quality():
    meta = _frame([(0, 0, 32, 32, "JPEG", 75), (0, 0, 600, 300, "JPEG", 95), (0, 0, 300, 700, "PNG", None),
                   (0, 0, 2000, 1500, "JPEG", None)])
    cols = slice_columns(meta)
    assert list(cols["size (short side)"]) == ["< 64 px", "256-511 px", "256-511 px", ">= 1024 px"]
    assert list(cols["aspect"]) == ["square", "landscape", "portrait", "landscape"]
    assert list(cols["JPEG quality"]) == ["60-79", "90-100", "not JPEG", "unknown"]


def test_slice_metrics_at_the_threshold_and_the_tests_called_share():
    val = _frame([(0.9, 1, 32, 32, "JPEG", 75), (0.8, 0, 32, 32, "JPEG", 75), (0.2, 1, 32, 32, "JPEG", 75),
                  (0.1, 0, 32, 32, "JPEG", 75), (0.7, 1, 32, 32, "JPEG", 95)])
    test = _frame([(0.9, None, 32, 32, "JPEG", 95), (0.3, None, 32, 32, "JPEG", 95)])
    table = slice_table(val, test, 0.5).set_index(["dimension", "slice"])
    q75 = table.loc[("JPEG quality", "60-79")]
    # at 0.5 among the four quality-75 images: tp 1 (0.9), fp 1 (0.8), fn 1 (0.2)
    assert (q75["val images"], q75["val precision"], q75["val recall"]) == (4, 0.5, 0.5)
    assert q75["val F1"] == pytest.approx(0.5) and q75["val called AI"] == 0.5
    assert q75["test images"] == 0 and pd.isna(q75["test called AI"])
    q95 = table.loc[("JPEG quality", "90-100")]
    assert (q95["val images"], q95["val called AI"], q95["test images"], q95["test called AI"]) == (1, 1.0, 2, 0.5)
    assert table.loc[("format", "JPEG"), "val images"] == 5
