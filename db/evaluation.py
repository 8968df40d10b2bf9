"""Label audits (their fold runs and per-image scores) and frozen evaluation sets."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import NotFound
from db.labelling import current_label_join, newest_label_rows
from db.models import (
    Audit,
    AuditScore,
    EvalSet,
    EvalSetImage,
    Image,
    Label,
    Run,
)
from db.queries import get_run, run_image_ids


def get_audit(s: Session, audit_id: int) -> Audit:
    audit = s.get(Audit, audit_id)
    if audit is None:
        raise NotFound(f"no audit {audit_id}; `aivh audit --list` lists them")
    return audit


def list_audits(s: Session, dataset_id: int | None = None) -> list[Audit]:
    q = select(Audit).order_by(Audit.id.desc())
    if dataset_id is not None:
        q = q.where(Audit.dataset_id == dataset_id)
    return list(s.scalars(q))


def audit_runs(s: Session, audit_id: int) -> list[Run]:
    return list(s.scalars(select(Run).where(Run.audit_id == audit_id).order_by(Run.fold)))


def audit_rows(s: Session, audit_id: int, *, flagged_only: bool = False, limit: int | None = None):
    """Worst first: rank, image_id, rel_path, given_label, prob, quality, flagged, current label, reviews."""
    audit = get_audit(s, audit_id)
    newest, reviews = newest_label_rows(audit.dataset_id)
    q = (select(AuditScore.rank, AuditScore.image_id, Image.rel_path, AuditScore.given_label,
                AuditScore.prob, AuditScore.quality, AuditScore.flagged, Label.label.label("current"),
                func.coalesce(reviews.c.n, 0).label("reviews"))
         .join(Image, Image.id == AuditScore.image_id)
         .outerjoin(newest, newest.c.image_id == Image.id)
         .outerjoin(Label, current_label_join(newest))
         .outerjoin(reviews, reviews.c.image_id == Image.id)
         .where(AuditScore.audit_id == audit_id))
    if flagged_only:
        q = q.where(AuditScore.flagged.is_(True))
    q = q.order_by(AuditScore.rank)
    if limit is not None:
        q = q.limit(limit)
    return list(s.execute(q))


def create_eval_set(s: Session, dataset_id: int, name: str, image_ids: Sequence[int], *,
                    author: str | None = None) -> EvalSet:
    if s.scalar(select(EvalSet).where(EvalSet.dataset_id == dataset_id, EvalSet.name == name)):
        raise ValueError(f"an evaluation set named {name!r} already exists")
    if not image_ids:
        raise ValueError("an evaluation set needs at least one image")
    es = EvalSet(dataset_id=dataset_id, name=name, author=author)
    s.add(es)
    s.flush()
    s.execute(EvalSetImage.__table__.insert(),
              [{"eval_set_id": es.id, "image_id": i} for i in sorted(set(image_ids))])
    return es


def freeze_validation(s: Session, run_id: int, name: str, *, author: str | None = None) -> EvalSet:
    """A run's validation images, frozen as an evaluation set named `name` (for fair comparisons)."""
    run = get_run(s, run_id)
    return create_eval_set(s, run.dataset_id, name, run_image_ids(s, run.id, "val"), author=author)


def get_eval_set(s: Session, dataset_id: int, name: str) -> EvalSet:
    es = s.scalar(select(EvalSet).where(EvalSet.dataset_id == dataset_id, EvalSet.name == name))
    if es is None:
        known = ", ".join(e.name for e in list_eval_sets(s, dataset_id)) or "none"
        raise NotFound(f"no evaluation set named {name!r} (known: {known})")
    return es


def list_eval_sets(s: Session, dataset_id: int) -> list[EvalSet]:
    return list(s.scalars(select(EvalSet).where(EvalSet.dataset_id == dataset_id).order_by(EvalSet.id)))


def eval_set_images(eval_set_id: int):
    """A select of a frozen evaluation set's image ids: for use in a query."""
    return select(EvalSetImage.image_id).where(EvalSetImage.eval_set_id == eval_set_id)


def eval_set_image_ids(s: Session, eval_set_id: int) -> list[int]:
    return list(s.scalars(eval_set_images(eval_set_id).order_by(EvalSetImage.image_id)))
