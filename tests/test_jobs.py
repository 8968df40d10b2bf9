"""The job side of a run: cancel between batches, heartbeat, stale runs."""
from datetime import timedelta

import pytest

from db import queries
from db.models import Run
from engine.errors import Cancelled
from engine.liveness import reap_stale
from engine.processes import now
from engine.recording import StoreCallbacks
from tests.conftest import finished_run


def test_cancel_flag_stops_the_job_at_the_next_batch(sessions):
    run_id = finished_run(sessions)
    cb = StoreCallbacks(sessions, run_id, [])
    cb.on_batch(1, 1, 10, 5.0)  # no flag: carries on and beats
    with sessions.begin() as s:
        queries.get_run(s, run_id).cancel_requested = True
    cb.last_beat = 0.0
    with pytest.raises(Cancelled):
        cb.on_batch(1, 2, 10, 5.0)


def test_a_silent_run_on_another_host_is_failed_after_the_stale_limit(sessions):
    run_id = finished_run(sessions)
    with sessions.begin() as s:
        ds = queries.get_run(s, run_id).dataset_id
        fresh = Run(dataset_id=ds, status="running", config={}, pid=1, heartbeat_at=now(),
                    progress={"host": "elsewhere"})
        stale = Run(dataset_id=ds, status="running", config={}, pid=1,
                    heartbeat_at=now() - timedelta(minutes=5), progress={"host": "elsewhere"})
        s.add_all([fresh, stale])
        s.flush()
        ids = fresh.id, stale.id
    with sessions.begin() as s:
        assert reap_stale(s) == [ids[1]]
    with sessions() as s:
        assert queries.get_run(s, ids[0]).status == "running"
        assert queries.get_run(s, ids[1]).status == "failed"
