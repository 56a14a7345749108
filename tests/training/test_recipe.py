"""The fine_tune recipe: two stages, each chosen on validation, trained on one feature pass; its knobs refused
clearly outside their ranges; the optimisers and the one-cycle schedule it brings."""
import pytest
import torch

from core.jobs.console import describe_record
from core.platform.errors import ConfigError
from core.runs.files import read_records
from core.spec.config import Stage, TrainConfig
from core.spec.records import Features, Start
from core.training.run import train
from tests.conftest import make_colour_dataset


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("recipe") / "c", per_class=8, classes=("blue", "green", "red"))


def _staged(colours, lite0_file, **extra) -> TrainConfig:
    settings = dict(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colours), num_workers=0,
                    recipe="fine_tune", epochs=2, stage2_epochs=2)
    return TrainConfig(**{**settings, **extra})


def test_the_recipe_names_its_stages_and_numbers_epochs_across_them():
    cfg = TrainConfig(recipe="fine_tune", epochs=5, stage2_epochs=3, schedule="cosine")
    assert cfg.stages() == [Stage(1, "head", 1, 5, "cosine"), Stage(2, "last_block", 6, 8, "one_cycle")]
    assert cfg.total_epochs == 8 and cfg.stage_of(6).number == 2 and cfg.stage_of(5).number == 1
    single = TrainConfig(freeze="last_block", epochs=4, stage2_epochs=9)
    assert single.stages() == [Stage(1, "last_block", 1, 4, "none")] and single.total_epochs == 4


@pytest.mark.parametrize("settings,refusal", [
    (dict(recipe="fine_tune", freeze="last_block"), "freeze must be head, got last_block"),
    (dict(recipe="fine_tune", processes=2, augment="flip"), "trains in several processes on cached features only"),
    (dict(recipe="twice"), "recipe 'twice' does not exist (allowed: single, fine_tune)"),
    (dict(optimizer="adam"), "optimizer 'adam' does not exist (allowed: sgd, adamw)"),
    (dict(schedule="exponential"), "allowed: none, step, cosine, one_cycle"),
    (dict(stage2_epochs=0), "stage2 epochs must be a whole number from 1 to 10,000, got 0"),
    (dict(warmup=0.0), "warmup must be a number from 0.01 to 0.9, got 0.0"),
    (dict(warmup=float("nan")), "warmup must be a number from 0.01 to 0.9"),
    (dict(stage2_lr_factor=2.0), "stage2 lr factor must be a number from 0.001 to 1, got 2.0"),
])
def test_every_new_knob_is_refused_outside_its_range_saying_what_is_allowed(settings, refusal):
    with pytest.raises(ConfigError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**settings)


def test_a_staged_run_trains_the_head_then_the_last_stage_on_one_feature_pass(colours, lite0_file, tmp_path):
    cfg = _staged(colours, lite0_file, optimizer="adamw", lr=0.003)
    records = list(train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache"))
    start = records[0]
    assert isinstance(start, Start) and start.epochs == 4
    assert [(s["number"], s["trains"], s["first"], s["last"]) for s in start.stages] == [
        (1, "head only", 1, 2), (2, "last stage + head", 3, 4)]
    assert start.stages[0]["trainable"] == start.trainable_params < start.stages[1]["trainable"]
    run = read_records(tmp_path / "run")
    assert [(e.epoch, e.stage) for e in run.epochs] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    # one pass over the images: the activations at the last stage's input, never the head's own features
    assert [f.split for f in records if isinstance(f, Features)] == ["train", "val", "test"]
    assert run.final.status == "completed" and run.test is not None
    assert run.test.epoch == max((e for e in run.epochs if e.best), key=lambda e: e.epoch).epoch
    # stage 2 trained the last stage: its weights moved from the pretrained ones, the frozen front did not
    trained = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)["model"]
    pretrained = torch.load(lite0_file, weights_only=False)
    assert not torch.equal(trained["_conv_head.weight"], pretrained["_conv_head.weight"])
    assert torch.equal(trained["_blocks.14._depthwise_conv.weight"], pretrained["_blocks.14._depthwise_conv.weight"])
    lines = [describe_record(r) for r in records]
    assert any("stage 2: last stage + head, epochs 3–4 (one_cycle schedule)" in (line or "") for line in lines)
    assert any((line or "").startswith("epoch 3 (stage 2) done:") for line in lines)


def test_stage_2_starts_from_stage_1s_chosen_epoch_and_keeps_its_batchnorm_statistics(colours, lite0_file,
                                                                                          tmp_path, monkeypatch):
    from core.training import train as trainer

    verdicts = iter([True, False, False])  # stage 1 chooses its epoch 1; stage 2 judges for itself
    real_is_best = trainer.Checkpointer.is_best

    def is_best(self, acc, loss):
        verdict = next(verdicts, None)
        return real_is_best(self, acc, loss) if verdict is None else verdict

    monkeypatch.setattr(trainer.Checkpointer, "is_best", is_best)
    seen = {}
    real_begin = trainer.begin_stage

    def begin(s, stage, path, checkpointer, resume):
        if stage.number == 2:  # what the files hold as stage 2 begins: epoch 1 kept, epoch 3 last
            seen["best"] = torch.load(s.run.best, weights_only=False)["model"]["_fc.weight"]
            seen["last"] = torch.load(s.run.last, weights_only=False)["model"]["_fc.weight"]
        training = real_begin(s, stage, path, checkpointer, resume)
        if stage.number == 2:
            seen["start"] = s.model.state_dict()["_fc.weight"].clone()
        return training

    monkeypatch.setattr(trainer, "begin_stage", begin)
    list(train(_staged(colours, lite0_file, epochs=3), tmp_path / "run", cache_dir=tmp_path / "cache"))
    assert torch.equal(seen["start"], seen["best"]) and not torch.equal(seen["start"], seen["last"])
    before = torch.load(lite0_file, weights_only=False)
    after = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)["model"]
    assert torch.equal(after["_bn1.running_mean"], before["_bn1.running_mean"])  # eval-mode BatchNorm in stage 2
    assert not torch.equal(after["_bn1.weight"], before["_bn1.weight"])  # its scale trained


def test_the_learning_rate_finder_sweeps_with_the_runs_optimiser(colours, lite0_file, tmp_path, monkeypatch):
    from core.spec.records import follow
    from core.training import lr_find

    made = []
    real = lr_find.make_optimizer
    monkeypatch.setattr(lr_find, "make_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    for optimizer in ("adamw", "sgd"):
        result = follow(lr_find.find_lr(_staged(colours, lite0_file, optimizer=optimizer),
                                        cache_dir=tmp_path / "cache", num_it=12))
        assert result.lrs
    assert [type(o).__name__ for o in made] == ["AdamW", "SGD"]


def test_a_cached_view_is_the_same_each_time_and_leaves_the_global_random_state_alone(colours):
    from core.data.datasets import CachedView, ListDataset
    from core.spec.archs import get_arch

    pre = get_arch("efficientnet_lite0").transforms()
    samples = [(str(p), 0) for p in sorted(colours.rglob("*.png"))[:3]]
    state = torch.get_rng_state()
    first = [ListDataset(samples, CachedView(pre, 1, seed=0))[i][0] for i in range(3)]
    again = [ListDataset(samples, CachedView(pre, 1, seed=0))[i][0] for i in range(3)]
    other = [ListDataset(samples, CachedView(pre, 2, seed=0))[i][0] for i in range(3)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
    assert first[0].shape == (3, 224, 224)


@pytest.mark.parametrize("settings,refusal", [
    (dict(aug_views=2, augment="flip"), "cached augmented views (aug views) train on the feature cache"),
    (dict(aug_views=2, freeze="all"), "cached augmented views (aug views) train on the feature cache"),
    (dict(aug_views=2, feature_cache=False), "cached augmented views (aug views) train on the feature cache"),
    (dict(aug_views=2, letterbox=True), "which the letterbox keeps whole"),
    (dict(aug_views=9), "aug views must be a whole number from 0 to 8, got 9"),
])
def test_cached_views_are_refused_where_they_cannot_apply(settings, refusal):
    with pytest.raises(ConfigError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**settings)


def test_a_staged_run_with_cached_views_trains_on_them_and_resumes_exactly(colours, lite0_file, tmp_path):
    from core.runs.listing import read_run
    from core.spec.records import Epoch
    from core.training.run import resume_training

    cfg = _staged(colours, lite0_file, aug_views=2, optimizer="adamw", lr=0.003)
    records = list(train(cfg, tmp_path / "straight", cache_dir=tmp_path / "cache"))
    computed = [f.split for f in records if isinstance(f, Features)]
    assert computed == ["train", "val", "test", "train, view 1 of 2", "train, view 2 of 2"]
    plain = list(train(_staged(colours, lite0_file, optimizer="adamw", lr=0.003), tmp_path / "plain",
                       cache_dir=tmp_path / "cache"))
    assert ([e.train_loss for e in plain if isinstance(e, Epoch)]
            != [e.train_loss for e in records if isinstance(e, Epoch)])  # the views changed what trained
    stream = train(cfg, tmp_path / "resumed", cache_dir=tmp_path / "cache")
    for record in stream:
        if isinstance(record, Epoch) and record.epoch == 3:
            break
    stream.close()
    assert read_run(tmp_path / "resumed").status == "stopped"
    list(resume_training(tmp_path / "resumed", cache_dir=tmp_path / "cache"))
    straight, resumed = read_records(tmp_path / "straight"), read_records(tmp_path / "resumed")
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in straight.epochs]
    assert resumed.final.test_acc == straight.final.test_acc


def test_cached_views_that_would_not_fit_in_memory_are_refused_before_any_pass(colours, lite0_file, tmp_path,
                                                                              monkeypatch):
    from core.training import feature_path

    class Scarce:
        available = 10_000

    monkeypatch.setattr(feature_path.psutil, "virtual_memory", lambda: Scarce())
    records = list(train(_staged(colours, lite0_file, aug_views=3), tmp_path / "run", cache_dir=tmp_path / "cache"))
    assert records[-1].status == "failed"
    assert f"3 cached views of {records[0].train_size} training images would take" in records[-1].reason
    assert "MiB available; give fewer aug views (or 0)" in records[-1].reason
    assert not [f for f in records if isinstance(f, Features) and "view" in f.split]


def test_stop_in_stage_2_ends_the_run_and_tests_the_epoch_chosen_so_far(colours, lite0_file, tmp_path):
    from core.runs.rundir import RunDir
    from core.spec.records import Batch, Test

    run = tmp_path / "run"
    records = []
    for record in train(_staged(colours, lite0_file, log_every=1), run, cache_dir=tmp_path / "cache"):
        records.append(record)
        if isinstance(record, Batch) and record.epoch == 3:  # stage 2's first batch
            RunDir(run).request_stop()
    final = records[-1]
    assert final.status == "stopped" and final.epochs_completed == 2  # stage 2's epoch did not finish
    test = next(r for r in records if isinstance(r, Test))
    assert test.epoch in (1, 2) and final.test_acc == test.acc  # the kept stage-1 epoch, tested once
    assert not RunDir(run).stop_requested()
