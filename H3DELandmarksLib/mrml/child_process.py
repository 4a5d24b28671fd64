"""Background commands a GUI starts, follows with a timer and can stop with their whole process tree.

Inside Slicer `sys.executable` is PythonSlicer, a launcher (CTK AppLauncher) that runs the real
Python as its own child: stopping only the process we started would leave the real work running.
So every command starts as the leader of a new process group (a new session on macOS and Linux,
``CREATE_NEW_PROCESS_GROUP`` on Windows) and `ChildProcessJob.cancel` ends the whole tree
(`stop_process_tree`: SIGTERM then SIGKILL to the group; ``taskkill /T /F`` on Windows). The
child's standard input is a pipe that only closes when this process ends, so a command started
with ``--stop-when-stdin-closes`` also stops when the GUI dies without cancelling it. On Windows
the child gets no console window and, everywhere, UTF-8 standard streams.

`ChildProcessJob` is the job interface the module follows (detection, training and, in a thread,
downloads share it): ``fraction`` (None while unknown), ``step``, ``finished``, ``poll()``,
``cancel()``, ``error()`` and ``cleanup()``. The command prints one JSON object per line on
stdout (`progress_events`); other lines are logged; the last lines of stderr are kept for `error`.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..progress_events import ERROR_PREFIX, PROGRESS, read_event

logger = logging.getLogger(__name__)

STDERR_LINES_KEPT = 40
TERMINATE_GRACE_S = 3.0
STOP_WHEN_STDIN_CLOSES = "--stop-when-stdin-closes"
WINDOWS = sys.platform == "win32"


def python_executable() -> str:
    """The Python that runs this library: PythonSlicer inside Slicer, this interpreter elsewhere."""
    return sys.executable


def library_command(*arguments: str, python: str | None = None) -> list[str]:
    """``python -m H3DELandmarksLib.cli.main ARGUMENTS...``."""
    return [python or python_executable(), "-m", "H3DELandmarksLib.cli.main", *arguments]


def child_environment() -> dict[str, str]:
    """This environment with the folder holding H3DELandmarksLib first on PYTHONPATH, unbuffered UTF-8 output."""
    environment = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    paths = [root, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    return environment


def start_process(command: list[str]) -> subprocess.Popen:
    """Start `command` as the leader of its own process tree, with piped, UTF-8 text streams."""
    options: dict = {}
    if WINDOWS:
        startupinfo = subprocess.STARTUPINFO()
        startupinfo.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        startupinfo.wShowWindow = subprocess.SW_HIDE
        options["startupinfo"] = startupinfo
        options["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        options["start_new_session"] = True
    logger.info("Running %s", subprocess.list2cmdline(command))
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, encoding="utf-8", errors="replace", env=child_environment(), **options,
    )


def stop_process_tree(process: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S) -> None:
    """End `process` and every process it started; waits at most `grace_s` before killing them."""
    if WINDOWS:
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW, check=False)
        return
    if not _signal_group(process.pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()
        if not _group_alive(process.pid):
            return
        time.sleep(0.05)
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(group: int, signal_number: int) -> bool:
    """Send a signal to a process group; False when the group no longer exists."""
    try:
        os.killpg(group, signal_number)
    except ProcessLookupError:
        return False
    return True


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


class ChildProcessJob:
    """One command running in the background (see module notes).

    Attributes:
        fraction: progress in [0, 1]; None while the command reports none.
        step: what the command reported doing last.
        last_line: the last line of text (not a JSON event) the command printed.
        cancelled: `cancel()` was called.
    """

    description = "The background task"

    def __init__(self, command: list[str]) -> None:
        self.fraction: float | None = None
        self.step = ""
        self.last_line = ""
        self.cancelled = False
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._process = start_process(command)
        self._readers = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def finished(self) -> bool:
        """The process ended and all its output was read."""
        return self._process.poll() is not None and not any(reader.is_alive() for reader in self._readers)

    def poll(self) -> list[dict]:
        """The JSON events printed since the last call, each passed to `on_event` first."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            self.on_event(event)
            events.append(event)

    def on_event(self, event: dict) -> None:
        """Take a ``progress`` event's fraction and step (subclasses read their other events)."""
        if event["event"] == PROGRESS:
            fraction = float(event.get("fraction", 0.0))
            self.fraction = fraction if self.fraction is None else max(self.fraction, fraction)
            self.step = str(event.get("step", self.step))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (tests, scripts); True when it finished within `timeout`."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        for reader in self._readers:
            reader.join(timeout)
        return self.finished

    def cancel(self) -> None:
        """Stop the command and every process it started; `finished` becomes true shortly after."""
        self.cancelled = True
        stop_process_tree(self._process)

    def error(self) -> str | None:
        """One sentence saying why the finished command failed; None when it succeeded."""
        if self.cancelled:
            return f"{self.description} was cancelled."
        status = self._process.returncode
        if status == 0:
            return None
        self.poll()
        reported = self.reported_error()
        if reported:
            return reported
        logger.error("%s failed:\n%s", self.description, "\n".join(self._stderr))
        return f"{self.description} stopped with exit status {status}; the log holds the details."

    def reported_error(self) -> str | None:
        """The command's own ``h3de: error: ...`` sentence, if it printed one."""
        for line in reversed(self._stderr):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):]
        return None

    def cleanup(self) -> None:
        """Stop the command if it still runs and close its pipes."""
        if self._process.poll() is None or (not WINDOWS and _group_alive(self._process.pid)):
            stop_process_tree(self._process)
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            stream.close()

    def _read_events(self) -> None:
        for line in self._process.stdout:
            event = read_event(line)
            if event is None:
                self._take_text(line)
            else:
                self._events.put(event)

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            self._stderr.append(line.rstrip("\n"))
            self._take_text(line)

    def _take_text(self, line: str) -> None:
        text = line.strip()
        if text:
            self.last_line = text
            logger.debug("%s: %s", self.description, text)

