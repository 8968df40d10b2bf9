"""A run's decision threshold: which one applies, and how it is shown. Pure (no store, no torch),
so pages may import it; export, compare and robustness use the same rule."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db.models import Run


def default_threshold(run: Run) -> tuple[float, str]:
    """The reviewer's chosen threshold, else the best validation-F1 threshold, else 0.5."""
    if run.chosen_threshold is not None:
        return run.chosen_threshold, "chosen"
    if run.best_threshold is not None:
        return run.best_threshold, "best_val_f1"
    return 0.5, "default"


def fmt_threshold(t: float) -> str:
    """A threshold as text that never rounds it to something else (0.99957, not 1.000; 8.5e-07)."""
    return f"{t:.6g}"
