"""Named crash points, for the tests that kill a run at an exact step of a protocol.

``SPARKVISION_FAULT=<name>`` makes :func:`point` ``<name>`` SIGKILL the process group it runs in (the driver,
its JVM and its Python workers at once, as a lost driver host would), so a test can start a command in a
new session and check what the next run makes of what was left. Unset (always, outside tests) it does
nothing. The names are the ``point(...)`` calls' own (``grep -rn "faults.point" src``).
"""

from __future__ import annotations

import os
import signal

ENV = "SPARKVISION_FAULT"


def point(name: str) -> None:
    """Die here, at once and without clean-up, when ``$SPARKVISION_FAULT`` names this point."""
    if os.environ.get(ENV) != name:
        return
    try:
        if os.getpgrp() == os.getpid():  # a session leader (the test's child): take the JVM and workers too
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)
