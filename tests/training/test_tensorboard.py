"""Every run writes TensorBoard events beside its records; failing to write them never fails the run."""
import pytest

from core.runs.files import read_records
from core.spec.config import TrainConfig
from core.training.run import train
from tests.conftest import make_colour_dataset


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("tb") / "c", per_class=6)


def test_a_run_writes_its_curves_and_hyperparameters_for_tensorboard(colours, lite0_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colours), epochs=2,
                           stage2_epochs=1, lr=0.01, num_workers=0, log_every=1), run))  # the default: staged
    records = read_records(run)
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"loss/batch", "loss/train", "loss/validation", "accuracy/validation", "learning_rate"} <= set(
        events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("accuracy/validation")] == [1, 2, 3]  # numbered across the stages
    assert ([e.value for e in events.Scalars("accuracy/validation")]
            == pytest.approx([e.val_acc for e in records.epochs]))
    assert len(events.Scalars("loss/batch")) == len(records.batches)
    files = [EventAccumulator(str(p)) for p in run.glob("events.out.tfevents.*")]
    assert len(files) == 2  # the curves, and the hparams summary written at the end
    for f in files:
        f.Reload()
    final = next(f for f in files if "hparam/test_acc" in f.Tags()["scalars"])
    for tag, value in (("test_acc", records.final.test_acc), ("val_acc", records.final.val_acc),
                       ("test_ci_low", records.final.test_ci_low), ("test_ci_high", records.final.test_ci_high)):
        assert final.Scalars(f"hparam/{tag}")[0].value == pytest.approx(value)


def test_events_that_cannot_be_written_leave_the_run_alone_and_are_said_once(colours, lite0_file, tmp_path, capsys,
                                                                             monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    run = tmp_path / "run"
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colours), epochs=2,
                           num_workers=0, log_every=1), run))
    assert read_records(run).final.status == "completed"
    notes = [line for line in capsys.readouterr().err.splitlines() if "TensorBoard" in line]
    assert len(notes) == 1 and "No space left on device" in notes[0] and "the run goes on" in notes[0]
