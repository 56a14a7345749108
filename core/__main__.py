import os
import sys

# Threads that wait for work spin by default and steal the CPU from the decoding workers (and from
# everything else on a busy machine); set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

code = main()
if sys.argv[1:2] == ["predict"]:
    # Every output is written: skip the interpreter's teardown (about a second with torch loaded).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
