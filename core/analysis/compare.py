"""Comparing two runs honestly: a difference only between runs tested on the same images, paired image by image.

``compare_runs(a, b)`` reads both runs' test lists and test predictions (never their models) and returns a
``Comparison``: whether they were tested on the same images, and if so the paired difference of their test
accuracies with its 95% interval and the exact McNemar test (``core.platform.figures``). Runs whose epoch was chosen on
the test split (older runs) are said to be so, and get no difference: their figures are optimistic by an
unknown amount.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from ..platform.errors import RunError
from ..platform.figures import PairedDifference, paired_difference
from ..runs.files import read_predictions, read_records
from ..runs.rundir import RunDir
from ..spec.records import CHOSEN_ON_TEST

MAX_LIST_BYTES = 512 * 1024**2  # a test list larger than this is not hashed (never the case for a real run)


@dataclass(frozen=True)
class Comparison:
    same_test_images: bool
    difference: PairedDifference | None  # a's test accuracy minus b's, paired; None when not comparable
    why_not: str = ""  # when there is no difference: why

    def text(self, a: str = "A", b: str = "B") -> str:
        if self.difference is None:
            return f"No difference is shown between {a} and {b}: {self.why_not}."
        return f"{a} − {b}: {self.difference.text()}."


def test_list_digest(run_dir: str | os.PathLike) -> str | None:
    """SHA-256 of the run's own test list (lists/test.txt): equal digests, same test images in the same order."""
    path = RunDir(run_dir).lists / "test.txt"
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _right_answers(run_dir, n: int) -> list[bool] | None:
    """Whether the run's kept model got each test image right, in test-list order; None when it was not tested
    on every image (unreadable ones) or has no test predictions."""
    predictions = read_predictions(RunDir(run_dir))
    if len(predictions) != n or sorted(p.index for p in predictions) != list(range(n)):
        return None
    return [not p.wrong for p in sorted(predictions, key=lambda p: p.index)]


def compare_runs(a_dir: str | os.PathLike, b_dir: str | os.PathLike) -> Comparison:
    """The paired comparison of runs ``a`` and ``b`` on their test images (see the module's docstring)."""
    digest_a, digest_b = test_list_digest(a_dir), test_list_digest(b_dir)
    if digest_a is None or digest_b is None or digest_a != digest_b:
        return Comparison(False, None, "they were tested on different images (their test lists differ)")
    try:
        records_a, records_b = read_records(a_dir), read_records(b_dir)
    except RunError as exc:
        return Comparison(True, None, f"a run cannot be read ({exc})")
    if CHOSEN_ON_TEST in (records_a.chosen_on, records_b.chosen_on):
        return Comparison(True, None, "one of them chose its epoch on the test split (an older run), so its test "
                                      "figure is optimistic")
    if records_a.test is None or records_b.test is None:
        return Comparison(True, None, "one of them has no test figures yet (still training, or test not evaluated)")
    n = records_a.start.test_size if records_a.start else 0
    try:
        right_a, right_b = _right_answers(a_dir, n), _right_answers(b_dir, n)
    except RunError as exc:
        return Comparison(True, None, f"a run's test predictions cannot be read ({exc})")
    if right_a is None or right_b is None:
        return Comparison(True, None, "not every test image was evaluated in both (some could not be read)")
    return Comparison(True, paired_difference(right_a, right_b))
