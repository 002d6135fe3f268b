"""The earlier import path of `app.runtime.enqueue` (before the house moved into rooms), kept so code written against
it, the peers benchmark among it, runs unchanged: `from app.enqueue import enqueue, enqueue_many`."""

from app.runtime.enqueue import Enqueued, EnqueuedJob, JobOptions, enqueue, enqueue_many

__all__ = ["Enqueued", "EnqueuedJob", "JobOptions", "enqueue", "enqueue_many"]
