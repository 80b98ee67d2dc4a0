"""A worker process frees each job's memory without rescanning everything it imported."""

from __future__ import annotations

import gc
import weakref


def test_what_came_before_jobs_is_frozen_once_and_jobs_garbage_is_still_collected(
        monkeypatch):
    from worker import execution

    monkeypatch.setattr(execution, "_frozen", False)
    execution.freeze_what_came_before_jobs()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    execution.freeze_what_came_before_jobs()
    assert gc.get_freeze_count() == frozen  # once: a job's objects are never frozen

    class Cycle:
        pass

    made_by_a_job = Cycle()
    made_by_a_job.me = made_by_a_job
    alive = weakref.ref(made_by_a_job)
    del made_by_a_job
    execution.release_memory()
    assert alive() is None
