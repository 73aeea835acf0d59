"""TensorBoard scalars written synchronously, so a failed write is ours to handle.

tensorboardX's SummaryWriter writes from a background thread and flushes again at interpreter exit
(atexit): on a full disk the thread dies with a traceback, and the exit-time flush prints another,
after the run's own one-line message (and can block on the dead thread's full queue). Here events go
to the same ``events.out.tfevents.*`` file through tensorboardX's synchronous ``EventsWriter``; the
first failed write is logged once as a warning and later ones are skipped: the curves are a side
product, the run's checkpoints and log say whether it succeeded.
"""
from __future__ import annotations

import logging
import os
import time


class ScalarLog:
    """``add_scalar(tag, value, step)``, ``flush()``, ``close()`` as in SummaryWriter (what training uses)."""

    def __init__(self, logdir: str, logger: logging.Logger | None = None):
        from tensorboardX.event_file_writer import EventsWriter

        self.logdir, self.log = logdir, logger or logging.getLogger("train")
        self._writer = None
        self._call(lambda: os.makedirs(logdir, exist_ok=True))
        self._writer = self._call(lambda: EventsWriter(os.path.join(logdir, "events")))

    def _call(self, fn):
        if self.log is None:  # disabled after the first failure
            return None
        try:
            return fn()
        except OSError as e:
            self.log.warning("tensorboard events in %s cannot be written (%s); training goes on without them",
                             self.logdir, e.strerror or e)
            self.log, self._writer = None, None
            return None

    def add_scalar(self, tag: str, value, step: int):
        if self._writer is None:
            return
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        event = event_pb2.Event(summary=scalar(tag, float(value)), step=int(step), wall_time=time.time())
        self._call(lambda: self._writer.write_event(event))

    def flush(self):
        if self._writer is not None:
            self._call(self._writer.flush)

    def close(self):
        if self._writer is not None:
            self._call(self._writer.close)
            self._writer = None
