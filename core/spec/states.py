"""Every state a run can be shown in, and every phase a progress record reports: the one place they are named.

Both are ``str`` enums: they are written to status.json, metrics.jsonl and summary.json as their plain
values ("completed", "features"), compare equal to those strings, and format as them in messages, so
files written before these types existed read the same.
"""
from __future__ import annotations

from .choices import Choice as _Named


class RunState(_Named):
    QUEUED = "queued"  # waiting for a free slot (TLD_MAX_RUNNING); no process yet
    STARTING = "starting"  # a process was started, or is setting up
    RUNNING = "running"
    NOT_RESPONDING = "not responding"  # running, but no heartbeat for STALE_AFTER_S (a reader's conclusion)
    COMPLETED = "completed"
    STOPPED = "stopped"  # on request, cancelled while queued, or interrupted
    FAILED = "failed"
    DAMAGED = "damaged"  # a file of the run cannot be read (a reader's conclusion)

    @property
    def ended(self) -> bool:
        """No process works on the run any more (damaged runs are not counted: nobody knows)."""
        return self in ENDED

    @property
    def busy(self) -> bool:
        """Holds one of the TLD_MAX_RUNNING slots."""
        return self in (RunState.STARTING, RunState.RUNNING, RunState.NOT_RESPONDING)

    @property
    def finished(self) -> bool:
        """Nothing more will happen to it: ended, or damaged."""
        return self in ENDED or self is RunState.DAMAGED


ENDED = (RunState.COMPLETED, RunState.STOPPED, RunState.FAILED)
WRITTEN = (RunState.QUEUED, RunState.STARTING, RunState.RUNNING, *ENDED)  # the states status.json may hold


class Phase(_Named):
    """What a progress record counts."""
    FEATURES = "features"  # the frozen part's pass over the images, computed once
    CACHED = "cached features"  # a large list's features read back from the cache
    TEST = "test"  # a test pass after an epoch
    # The data check's phases (core.analysis.datacheck), in the order they run.
    HEADERS = "headers"  # every image's header read (the health section)
    HASHES = "hashes"  # contents hashed, for exact duplicates
    PERCEPTUAL = "perceptual hashes"  # pixels hashed, for resized and re-encoded copies
    NEIGHBOURS = "neighbours"  # feature similarities, for near duplicates
    FOLDS = "folds"  # cross-validation of a linear head and k-NN (label issues, the baseline)
    MAP = "map"  # the 2-D projection of the features
    LR_SWEEP = "lr sweep"  # the learning-rate finder's steps (core.training.lr_find)
    TRIALS = "trials"  # the head search's trials (core.training.tune)

    @property
    def doing(self) -> str:
        """What the phase is busy with, for a progress line."""
        return PHASE_DOING[self]


PHASE_DOING = {Phase.FEATURES: "computing backbone features", Phase.CACHED: "reading cached features",
               Phase.TEST: "testing",
               Phase.HEADERS: "reading image headers", Phase.HASHES: "hashing for exact duplicates",
               Phase.PERCEPTUAL: "hashing pixels for resized copies",
               Phase.NEIGHBOURS: "comparing features for near duplicates",
               Phase.FOLDS: "cross-validating a linear head", Phase.MAP: "projecting the features to 2-D",
               Phase.LR_SWEEP: "sweeping the learning rate", Phase.TRIALS: "searching the head's settings"}
