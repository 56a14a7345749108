import sys

from .cli import main  # core/__init__.py has set OMP_WAIT_POLICY before this imports torch
from .platform.exiting import exit_without_teardown, under_torchrun

code = main()
if sys.argv[1:2] == ["predict"] or under_torchrun():
    # Every output is written. predict: the teardown costs about a second with torch loaded;
    # under torchrun: it can abort a rank after a completed run.
    exit_without_teardown(code)
sys.exit(code)
