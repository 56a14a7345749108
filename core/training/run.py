"""A run's life: from its folder to its last record, and what state it ends in.

``train(config, run_dir)`` creates a run folder and trains it; ``run_training(run_dir)`` trains a run folder
someone else created (the app's worker). Both yield the typed records (``core.spec.records``) as they are
appended to ``metrics.jsonl``. This module maps how training ended (finished, stopped, stopped early,
failed, interrupted, a crash of another torchrun rank) to the run's final state and reason, keeps the
status heartbeat, and writes summary.json; ``core.training.train`` does the training itself.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Iterator

import torch

from ..data.split import read_split
from ..models.surgery import adapt_model
from ..platform.distributed import SINGLE, Terminated, World, barrier
from ..platform.errors import RunError, UserError
from ..platform.io import append_jsonl, atomic_write_text, read_tail_text
from ..runs.checkpoint import Checkpoint, read_checkpoint
from ..runs.create import claim_resume, create_run, own_resume_claim
from ..runs.files import read_records
from ..runs.listing import read_run, summarise, write_summary
from ..runs.rundir import RunDir, load_config
from ..runs.status import Heartbeat
from ..spec.config import TrainConfig
from ..spec.records import Batch, Epoch, Final, Progress, Record, Records, Resumed, Start, Test
from ..spec.states import Phase, RunState
from .feature_path import StagePaths
from .setup import StopRequested
from .tensorboard_log import TensorBoardLog
from .train import EarlyStop, NonFiniteLoss, ResumePoint, epoch_loop, run_inputs, set_up, start_record


def records(run: RunDir, cfg: TrainConfig, cache_dir: Path | None, allowed_roots, world: World,
             phase=lambda text: None, resume: ResumePoint | None = None) -> Iterator[Record]:
    s = set_up(cfg, run, allowed_roots, world, phase, resuming=resume is not None)
    yield start_record(s) if resume is None else Resumed(after_epoch=resume.epoch, time=time.time())
    yield from epoch_loop(s, StagePaths(s, cache_dir), resume)


def phase_of(record: Record) -> str | None:
    """The phase status.json shows once ``record`` has been emitted."""
    if isinstance(record, Progress):
        if record.phase == Phase.FEATURES:
            return f"features ({record.split})"
        if record.phase == Phase.CACHED:
            return f"cached features read ({record.split})"
        return f"{'validation' if record.split == 'val' else 'test'} pass, epoch {record.epoch}"
    if isinstance(record, Test):
        return "test figures written"
    if isinstance(record, Start):
        return "preparing data"
    if isinstance(record, (Batch, Epoch)):
        return f"epoch {record.epoch + (1 if isinstance(record, Epoch) else 0)}"
    return None


def resume_point(run: RunDir, *, claimed: bool = False) -> ResumePoint:
    """Check that ``run`` can go on from its last checkpoint, and claim it (one resume at a time); RunError
    saying why not, with the run left as it was. ``claimed``: the app checked and claimed it before starting
    this worker (whose status says 'starting' by now), so only the checkpoint is read again."""

    if not claimed:
        info = read_run(run.path)
        if info.status is RunState.DAMAGED:
            raise RunError(f"this run is damaged and cannot be resumed: {info.reason}")
        if info.status is RunState.COMPLETED:
            raise RunError("nothing to resume: the run completed")
        if not info.status.ended:
            raise RunError(f"the run is {info.status}; only a stopped or failed run can be resumed")
    if not run.last.is_file():
        raise RunError("nothing to resume from: the run stopped before its first epoch ended; start it again")
    checkpoint = read_checkpoint(run.last)
    stored = checkpoint.inputs
    if not isinstance(stored, dict) or checkpoint.epoch is None or checkpoint.rng is None:
        raise RunError(f"{run.last.name} was written before runs could be resumed (or is not this tool's); start "
                       "the run again")
    now = run_inputs(run)
    changed = sorted(name for name in set(stored) | set(now) if stored.get(name) != now.get(name))
    if changed:
        raise RunError(f"the run's {', '.join(changed)} changed since its last checkpoint; resuming would train "
                       "something else than it started. Start a new run instead")
    records = read_records(run)
    if checkpoint.epoch >= load_config(run).total_epochs:
        raise RunError("nothing to resume: the checkpoint is of the last epoch")
    problem = _unresumable(checkpoint, run)
    if problem:
        raise RunError(f"{run.last.name} cannot be resumed: {problem}; the run is left as it was (start it again)")
    # One claim per attempt: every attempt that got its claim ends with a final record (a failure included),
    # so the count of finals names the next attempt and a failed one never blocks the next; one killed
    # before its final leaves a claim whose process is gone, which the next attempt takes over.
    attempt = len(records.of(Final))
    if claimed:
        own_resume_claim(run, attempt)
    elif not claim_resume(run, attempt):
        raise RunError("another resume of this run has started; follow that one")
    return ResumePoint(checkpoint, [e for e in records.epochs if e.epoch <= checkpoint.epoch])


def _unresumable(checkpoint: Checkpoint, run: RunDir) -> str:
    """What in ``checkpoint`` would fail or mislead once training went on from it (a forged or foreign file):
    the epoch, the optimizer's and the schedule's state, the random state, the class list and every tensor of
    the model, checked against the run's own config and lists before anything starts; "" when it fits."""


    cfg = load_config(run)
    epoch = checkpoint.epoch or 0
    if not 1 <= epoch < cfg.total_epochs:
        return f"its epoch {epoch} is not one of the run's epochs 1 to {cfg.total_epochs - 1}"
    optimizer = checkpoint.optimizer
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        return "it holds no optimizer state"
    if not (checkpoint.scheduler is None or isinstance(checkpoint.scheduler, dict)):
        return "its schedule state is not one"
    rng = checkpoint.rng
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape):
        return "its random state is not torch's"
    classes = read_split(run.lists).classes
    if checkpoint.classes != classes:
        return f"its classes are not the run's {len(classes)}"
    model = checkpoint.model
    expected, _ = adapt_model(cfg.arch, len(classes), head_variant=cfg.head_variant, freeze=cfg.freeze)
    shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    if not isinstance(model, dict) or set(model) != set(shapes):
        return f"its model is not a {cfg.arch} state dict"
    wrong = [k for k, v in model.items() if not isinstance(v, torch.Tensor) or tuple(v.shape) != shapes[k]]
    if wrong:
        return f"{len(wrong)} of its model's tensors have other shapes than {cfg.arch}'s (e.g. '{wrong[0]}')"
    return ""


def resume_training(run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                    allowed_roots=None, claimed: bool = False) -> Iterator[Record]:
    """Continue a stopped or failed run from checkpoint_last.pt (model, optimizer, schedule, epoch, RNG): its
    records go on in the same metrics.jsonl after a ``resumed`` record, as if it had never stopped. One
    process (a run trained under torchrun resumes as one: the same model and cached features)."""
    run = RunDir(run_dir)
    point = resume_point(run, claimed=claimed)
    yield from run_training(run.path, cache_dir=cache_dir, allowed_roots=allowed_roots, resume=point)


def run_training(run_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 allowed_roots=None, world: World = SINGLE, resume: ResumePoint | None = None) -> Iterator[Record]:
    """Train the config a run folder holds (written once by whoever created it), reporting as it goes.

    Under torchrun every rank runs this; rank 0 alone writes the records, status.json and summary.json.
    """
    if not world.main:
        yield from _other_rank(RunDir(run_dir), cache_dir, allowed_roots, world)
        return
    run = RunDir(run_dir)
    cfg = load_config(run)
    # a resumed run's summary covers all its epochs: the records before the resume count, their final does not
    emitted: list[Record] = [r for r in read_records(run).items if not isinstance(r, Final)] if resume else []
    first = emitted[0] if emitted else None
    events = TensorBoardLog(run.path, cfg.to_dict(), first if isinstance(first, Start) else None)  # best-effort
    t0 = time.time()
    with Heartbeat(run) as heartbeat:
        heartbeat.set_phase("setting up")
        status, reason = RunState.COMPLETED, ""
        try:
            for record in records(run, cfg, Path(cache_dir) if cache_dir else None, allowed_roots, world,
                                   heartbeat.set_phase, resume):
                append_jsonl(run.metrics, record.to_json())
                emitted.append(record)
                events.write(record)
                heartbeat.set_phase(phase_of(record) or heartbeat.phase)
                yield record
        except StopRequested as exc:
            status, reason = RunState.STOPPED, ("stopped on request; the completed epochs' checkpoints are kept"
                                                + (f"; {exc}" if str(exc) else ""))
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
            last = [line for line in read_tail_text(path).splitlines() if line.strip()][-1]
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
