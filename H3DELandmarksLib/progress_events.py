"""The progress protocol of `h3de detect --progress json`: one JSON object per line on stdout.

The command writes (`EventWriter`) and a parent process reads (`read_event`):

- ``start``: cases, model_id, model_version, device, load_seconds;
- ``progress``: case, index, total, step, fraction (of that case, in [0, 1]);
- ``case_done``: case, input, status ("ok", "failed", or "skipped": its outputs were already
  complete), present, absent, seconds, outputs, timings, error (a sentence, or null), note (a
  sentence worth a look, such as why every landmark is absent, or null);
- ``done``: cases, succeeded, failed, seconds, load_seconds.

On a Dask cluster (``--workers``, ``--cluster``) ``start`` also gives the number of workers
and ``progress`` the worker's address.

Every object has its kind under ``event``. Errors go to stderr as lines starting with
`ERROR_PREFIX` followed by one sentence, notes as lines starting with `NOTE_PREFIX`.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

START = "start"
PROGRESS = "progress"
CASE_DONE = "case_done"
DONE = "done"
EVENTS = (START, PROGRESS, CASE_DONE, DONE)
ERROR_PREFIX = "h3de: error: "
NOTE_PREFIX = "h3de: note: "


class EventWriter:
    """Writes events to `stream` (default: the standard output at the time of writing), flushed at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def emit(self, event: str, **fields) -> None:
        """Write one event of kind `event` (one of `EVENTS`) with `fields`."""
        if event not in EVENTS:
            raise ValueError(f"unknown progress event {event!r}")
        print(json.dumps({"event": event, **fields}), file=self.stream or sys.stdout, flush=True)


def read_event(line: str) -> dict | None:
    """The event a line holds, or None for any other line (a library's stray print, say)."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and event.get("event") in EVENTS else None
