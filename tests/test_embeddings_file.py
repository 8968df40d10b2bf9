"""The embeddings file: the contract between `aivh embed` and what reads embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from engine import embeddings


def test_saved_embeddings_come_back_sorted_by_image_id_as_float16(workspace):
    vectors = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    embeddings.save(7, [30, 10, 20], vectors, "sha")
    got = embeddings.load(7)
    assert got.image_id.tolist() == [10, 20, 30] and got.vectors.dtype == np.float16
    assert got.vectors.tolist() == [[3.0, 4.0], [5.0, 6.0], [1.0, 2.0]] and got.checkpoint == "sha"
    assert got.rows([20, 99, 10]).tolist() == [1, -1, 0]
    assert not list(embeddings.path(7).parent.glob(".*tmp*"))  # the atomic rename left nothing


def test_missing_or_inconsistent_embeddings_are_one_clear_error(workspace):
    with pytest.raises(LookupError, match="aivh embed --run 8"):
        embeddings.load(8)
    with pytest.raises(ValueError, match="appears twice"):
        embeddings.save(8, [1, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 ids"):
        embeddings.save(8, [1, 2], np.zeros((3, 3)))
    assert not embeddings.exists(8)
