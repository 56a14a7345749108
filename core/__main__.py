import os
import sys

from .cli import main  # core/__init__.py has set OMP_WAIT_POLICY before this imports torch

code = main()
if sys.argv[1:2] == ["predict"]:
    # Every output is written: skip the interpreter's teardown (about a second with torch loaded).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
