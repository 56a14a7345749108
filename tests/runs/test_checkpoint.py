"""A run's checkpoint: one writer, one reader, and a hostile file refused with a message naming it."""
import zipfile

import pytest
import torch

from core.platform.errors import RunError
from core.runs.checkpoint import Checkpoint, checkpoint_damage, read_checkpoint, write_checkpoint
from core.spec.config import TrainConfig


def _checkpoint(**changes) -> Checkpoint:
    fields = dict(model={"w": torch.ones(2)}, epoch=2, classes=["a", "b"], config=TrainConfig(epochs=3).to_dict(),
                  metrics={"epoch": 2}, temperature=1.5, temperature_fitted_on="the 4 validation images'",
                  optimizer={"state": {}, "param_groups": []}, rng=torch.get_rng_state(), inputs={"config.json": "x"})
    return Checkpoint(**{**fields, **changes})


def test_what_is_written_is_read_back(tmp_path):
    write_checkpoint(tmp_path / "c.pt", _checkpoint())
    read = read_checkpoint(tmp_path / "c.pt")
    assert (read.epoch, read.classes, read.temperature, read.metrics) == (2, ["a", "b"], 1.5, {"epoch": 2})
    assert torch.equal(read.model["w"], torch.ones(2)) and read.train_config(tmp_path).epochs == 3
    assert checkpoint_damage(tmp_path / "c.pt") == ""


def test_without_a_temperature_the_file_has_no_such_key(tmp_path):
    write_checkpoint(tmp_path / "c.pt", _checkpoint(temperature=None, temperature_fitted_on=None))
    assert "temperature" not in torch.load(tmp_path / "c.pt", weights_only=True)
    assert read_checkpoint(tmp_path / "c.pt").temperature is None


@pytest.mark.parametrize("content, said", [
    (b"not a checkpoint", "damaged or not a checkpoint"),
    ([1, 2, 3], "holds a list, not a checkpoint"),
    ({"model": [1]}, "not a checkpoint written by this tool"),
    ({"model": {}, "temperature": 1e9}, "a temperature of 1000000000.0"),
])
def test_a_hostile_file_is_refused_naming_it(tmp_path, content, said):
    path = tmp_path / "checkpoint_last.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(RunError, match=said) as refused:
        read_checkpoint(path)
    assert "checkpoint_last.pt" in str(refused.value)


def test_a_zip_that_is_not_a_checkpoint_is_named_without_loading_it(tmp_path):
    path = tmp_path / "checkpoint_best.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("holiday.jpg", b"\xff\xd8")
    assert "not a PyTorch checkpoint" in checkpoint_damage(path)
    with pytest.raises(RunError, match="not a checkpoint"):
        read_checkpoint(path)
    write_checkpoint(tmp_path / "whole.pt", _checkpoint())
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:-100])  # a write cut short
    assert "damaged or cut short" in checkpoint_damage(tmp_path / "cut.pt")
