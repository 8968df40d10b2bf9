"""Store queries for a run's owner: the process (host, pid, start time) that alone may write it.

Every write here is a conditional UPDATE on the owner columns (compare and set), so two
processes can never both take a run, and a process that lost a run cannot overwrite it.
Each function takes a session first; callers own the transaction.
"""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from db.models import Prediction, Run

Owner = tuple[str | None, int | None, float | None]  # (host, pid, process start time)


def owner_of(run: Run) -> Owner:
    return run.host, run.pid, run.pid_started


def _is(column, value):
    return column.is_(None) if value is None else column == value


def _owned_by(run_id: int, owner: Owner):
    host, pid, started = owner
    return (Run.id == run_id, _is(Run.host, host), _is(Run.pid, pid), _is(Run.pid_started, started))


def set_if_owner(s: Session, run_id: int, owner: Owner, **values) -> bool:
    """Set `values` on the run if `owner` still owns it; False (nothing written) otherwise."""
    stmt = (update(Run).where(*_owned_by(run_id, owner)).values(**values)
            .execution_options(synchronize_session=False))
    done = s.execute(stmt).rowcount == 1
    if done:
        run = s.get(Run, run_id)
        if run is not None:
            s.expire(run)  # the next read sees what was written
    return done


def take(s: Session, run_id: int, expected: Owner, new: Owner, **values) -> bool:
    """Make `new` the run's owner if its owner is still `expected` (the one that was found
    dead, or none); False when another process got there first."""
    host, pid, started = new
    return set_if_owner(s, run_id, expected, host=host, pid=pid, pid_started=started, **values)


def replace_predictions(s: Session, run_id: int, image_ids: Sequence[int],
                        probs: Sequence[tuple[int, float]], *, epoch: int | None,
                        checkpoint_sha1: str | None) -> int:
    """Replace the run's predictions on `image_ids` with `probs`, each row naming the
    checkpoint (epoch, file sha1) that made it."""
    s.execute(delete(Prediction).where(Prediction.run_id == run_id, Prediction.image_id.in_(list(image_ids))))
    rows = [{"run_id": run_id, "image_id": int(i), "prob": float(p), "epoch": epoch,
             "checkpoint_sha1": checkpoint_sha1} for i, p in probs]
    if rows:
        s.execute(Prediction.__table__.insert(), rows)
    return len(rows)
