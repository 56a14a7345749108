"""A run's life: from its folder to its last record, and what state it ends in.

``train(config, run_dir)`` creates a run folder and trains it; ``run_training(run_dir)`` trains a run folder
someone else created (the app's worker). Both yield the typed records (``core.records``) as they are
appended to ``metrics.jsonl``. This module maps how training ended (finished, stopped, stopped early,
failed, interrupted, a crash of another torchrun rank) to the run's final state and reason, keeps the
status heartbeat, and writes summary.json; ``core.train`` does the training itself.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Iterator

from .config import TrainConfig
from .states import Phase, RunState
from .errors import UserError
from .io import append_jsonl, atomic_write_text
from .records import Batch, Epoch, Final, Progress, Record, Records, Start
from .distributed import SINGLE, Terminated, World, barrier
from .rundir import Heartbeat, RunDir, create_run, load_config, summarise, write_summary
from .feature_path import choose_feature_path
from .tensorboard_log import TensorBoardLog
from .train import EarlyStop, NonFiniteLoss, StopRequested, epoch_loop, set_up, start_record


def records(run: RunDir, cfg: TrainConfig, cache_dir: Path | None, allowed_roots, world: World,
             phase=lambda text: None) -> Iterator[Record]:
    s = set_up(cfg, run, allowed_roots, world, phase)
    yield start_record(s)
    path = yield from choose_feature_path(s, cache_dir)
    yield from epoch_loop(s, path)


def phase_of(record: Record) -> str | None:
    """The phase status.json shows once ``record`` has been emitted."""
    if isinstance(record, Progress):
        return f"features ({record.split})" if record.phase == Phase.FEATURES else f"test pass, epoch {record.epoch}"
    if isinstance(record, Start):
        return "preparing data"
    if isinstance(record, (Batch, Epoch)):
        return f"epoch {record.epoch + (1 if isinstance(record, Epoch) else 0)}"
    return None


def run_training(run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 allowed_roots=None, world: World = SINGLE) -> Iterator[Record]:
    """Train the config a run folder holds (written once by whoever created it), reporting as it goes.

    Under torchrun every rank runs this; rank 0 alone writes the records, status.json and summary.json.
    """
    if not world.main:
        yield from _other_rank(RunDir(run_dir), cache_dir, allowed_roots, world)
        return
    run = RunDir(run_dir)
    cfg = load_config(run)
    emitted: list[Record] = []
    events = TensorBoardLog(run.path, cfg.to_dict())  # best-effort: its failures never end the run
    t0 = time.time()
    with Heartbeat(run) as heartbeat:
        heartbeat.set_phase("setting up")
        status, reason = RunState.COMPLETED, ""
        try:
            for record in records(run, cfg, Path(cache_dir) if cache_dir else None, allowed_roots, world,
                                   heartbeat.set_phase):
                append_jsonl(run.metrics, record.to_json())
                emitted.append(record)
                events.write(record)
                heartbeat.set_phase(phase_of(record) or heartbeat.phase)
                yield record
        except StopRequested:
            status, reason = RunState.STOPPED, "stopped on request; the last completed epoch's checkpoint is kept"
        except EarlyStop as exc:
            status, reason = RunState.COMPLETED, str(exc)
        except (NonFiniteLoss, UserError, Terminated) as exc:
            status, reason = RunState.FAILED, str(exc)
        except KeyboardInterrupt:
            status, reason = RunState.STOPPED, "interrupted (Ctrl+C); the last completed epoch's checkpoint is kept"
        except GeneratorExit:
            events.write(_finish(run, heartbeat, RunState.STOPPED, "the consumer of the record stream stopped early",
                                 emitted, t0))
            raise
        except Exception as exc:  # a bug or a resource problem: keep the traceback for the log
            status, reason = RunState.FAILED, f"{type(exc).__name__}: {exc}"
            atomic_write_text(run.error, traceback.format_exc())
        final = _finish(run, heartbeat, status, reason, emitted, t0)
        events.write(final)
        yield final


def _other_rank(run: RunDir, cache_dir, allowed_roots, world: World) -> Iterator[Record]:
    """A rank other than 0: the same computation and collectives, no files; a failure is left in
    error-rank<N>.txt for rank 0's reason and the user."""
    try:
        yield from records(run, load_config(run), Path(cache_dir) if cache_dir else None, allowed_roots, world)
    except (StopRequested, Terminated, EarlyStop):
        return
    except BaseException:
        atomic_write_text(run.rank_error(world.rank), traceback.format_exc())
        raise


def _rank_failures(run: RunDir) -> str:
    """The last line of each other rank's traceback, for rank 0's reason."""
    lines = []
    for path in run.rank_errors():
        try:
            last = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-1]
        except (OSError, IndexError):
            continue
        lines.append(f"{path.stem.removeprefix('error-')}: {last[:300]}")
    return "; ".join(lines)


def _finish(run: RunDir, heartbeat: Heartbeat, status: RunState, reason: str, emitted: list, t0: float) -> Final:
    others = _rank_failures(run) if status is RunState.FAILED else ""
    reason = f"{reason} ({others})" if others else reason
    records = Records(tuple(emitted))
    start = records.start
    final = Final(status=status, reason=reason, seconds=time.time() - t0, **summarise(records),
                  device=start.device if start else None, device_name=start.device_name if start else None,
                  feature_path=start.feature_path if start else None)
    append_jsonl(run.metrics, final.to_json())
    write_summary(run, final)
    run.stop_flag.unlink(missing_ok=True)
    heartbeat.finish(status, reason)
    return final


def train(cfg: TrainConfig, run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
          force: bool = False, world: World = SINGLE) -> Iterator[Record]:
    """Create a run of ``cfg`` in ``run_dir`` and train it, yielding every record as it is appended.

    Under torchrun, call it on every rank with the same ``run_dir``: rank 0 creates the run.
    """
    if world.main:
        create_run(run_dir, cfg, force=force)
    barrier(world)
    yield from run_training(run_dir, cache_dir=cache_dir, world=world)
