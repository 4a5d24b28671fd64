"""``--stop-when-stdin-closes``: a command started by a GUI ends when the GUI goes away.

The GUI starts the command with a pipe as its standard input and never writes to it; the pipe
closes only when the GUI process ends (or crashes). A daemon thread waits for that end of file and
ends this process at once, so no detection or training outlives the application that asked for it.
Outputs are written atomically, so stopping between two writes leaves no half-written file.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

OPTION = "--stop-when-stdin-closes"
STDIN_CLOSED_STATUS = 3


def add_option(parser: argparse.ArgumentParser) -> None:
    """Register ``--stop-when-stdin-closes``."""
    parser.add_argument(OPTION, action="store_true",
                        help="stop as soon as standard input closes (for programs that start this command)")


def stop_when_stdin_closes(enabled: bool) -> None:
    """When `enabled`, end the process (status 3) as soon as standard input reaches end of file."""
    if enabled:
        threading.Thread(target=_wait_for_end_of_input, args=(sys.stdin.fileno(),), daemon=True,
                         name="stop when stdin closes").start()


def _wait_for_end_of_input(descriptor: int) -> None:
    try:
        while os.read(descriptor, 4096):
            pass
    except OSError:
        pass
    os._exit(STDIN_CLOSED_STATUS)
