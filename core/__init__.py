"""core: the transfer-learning engine behind the dashboard (no Streamlit here).

Split a class-folder dataset, adapt a pretrained CNN with a surgery report, train as a
stream of metric records, predict from a run. The pages, the CLI and the tests all use it.
"""
import os as _os

# OpenMP threads that wait for work spin by default and steal the CPU from the decoding workers (and from
# everything else on a busy machine). Set here, before any module of core loads torch, so every process that
# uses core (the CLI, the app, the training workers it starts, which inherit it) sleeps instead.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
