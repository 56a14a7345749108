"""How a command-line process ends (torch-free, so commands that never train do not import torch for it)."""
from __future__ import annotations

import os
import sys


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_without_teardown(code: int):
    """End this process with ``code`` once its output is flushed, skipping the interpreter's teardown.

    Every file a run writes is complete by then (atomic writes, closed logs). The teardown is where
    torch's C++ threads and Python's finalisation can race (a gloo rank aborted there in CI, SIGABRT
    after a completed run, see pytorch/pytorch#179291), which torchrun reports as a failed run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
