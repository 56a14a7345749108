"""The speed choices, tested on the CPU: thread planning, device choice, device-side accumulation."""
import pytest
import torch

from core.features.cache import FeatureSet
from core.platform.accel import configure_device, plan_threads, resolve_device
from core.platform.errors import RunError
from core.spec.records import cells_of, confusion_cells
from core.training.feature_path import DeviceBatches, EpochShuffle
from core.training.train import EvalAccumulator


@pytest.mark.parametrize("cores, requested, cuda, expected", [
    (2, -1, False, (2, 0)),  # the 2-core case measured: 2 threads, decoding in between, never 3 busy threads
    (4, -1, False, (3, 1)),
    (1, -1, False, (1, 0)),
    (16, -1, False, (12, 4)),
    (16, -1, True, (8, 8)),  # on a GPU the cores mostly decode
    (64, -1, True, (56, 8)),
    (2, 0, False, (2, 0)),  # the user's choice of workers; threads take the rest
    (4, 3, False, (1, 3)),
])
def test_threads_and_workers_never_exceed_the_cores(cores, requested, cuda, expected):
    threads, workers = plan_threads(requested, cuda=cuda, cores=cores)
    assert (threads, workers) == expected
    assert threads >= 1 and (threads + workers <= cores or workers >= cores)


def test_the_start_record_says_what_was_chosen(colour_data, lite0_file, tmp_path):
    from core.spec.config import TrainConfig
    from core.training.run import train

    start = next(iter(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file),
                                        data_root=str(colour_data), epochs=1), tmp_path / "run")))
    assert (start.threads, start.workers) == plan_threads(-1)
    assert torch.get_num_threads() == start.threads


def test_device_choice():
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("auto", cuda_available=True) == torch.device("cuda")
    assert resolve_device("cuda:1", cuda_available=True) == torch.device("cuda:1")
    with pytest.raises(RunError, match="CUDA is not available"):
        resolve_device("cuda", cuda_available=False)
    configure_device(torch.device("cpu"))  # harmless on the CPU
    assert not torch.backends.cudnn.benchmark


def test_the_predictor_uses_the_gpu_when_there_is_one(colour_data, lite0_file, tmp_path, monkeypatch):
    from core.inference.predict import Predictor
    from core.spec.config import TrainConfig
    from core.training.run import train

    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colour_data),
                           epochs=1, num_workers=0), tmp_path / "run"))
    assert Predictor.load(tmp_path / "run").device == torch.device("cpu")  # auto, on this machine
    asked = []
    monkeypatch.setattr("core.inference.predict.resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    Predictor.load(tmp_path / "run")
    assert asked == ["auto"]


def test_cached_features_are_batched_from_the_device_in_the_sampler_order():
    features = FeatureSet(torch.arange(20.0).view(10, 2), torch.arange(10) % 2, torch.arange(10), 0)
    sampler = EpochShuffle(10, seed=3)
    sampler.set_epoch(2)
    batches = list(DeviceBatches(features, torch.device("cpu"), 4, sampler))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert torch.cat([b[2] for b in batches]).tolist() == list(sampler)
    x, y, i, skipped = batches[0]
    assert torch.equal(x, features.features[i]) and torch.equal(y, features.labels[i]) and skipped == 0


def test_device_side_accumulation_matches_a_per_sample_reference():
    torch.manual_seed(0)
    acc = EvalAccumulator(3, torch.device("cpu"))
    all_logits, all_labels = [], []
    for start in (0, 5, 12):
        logits, labels = torch.randn(start + 3, 3), torch.randint(0, 3, (start + 3,))
        acc.add(logits, labels, torch.arange(len(labels)) + 100 * start)
        all_logits.append(logits)
        all_labels.append(labels)
    result = acc.result(skipped=2)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    reference = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(labels.tolist(), logits.argmax(1).tolist()):
        reference[t, p] += 1
    assert result.confusion == confusion_cells(reference)
    assert cells_of(result.confusion, 3) == [(t, p, n) for t, row in enumerate(reference.tolist())
                                             for p, n in enumerate(row) if n]
    assert result.tested == len(labels) == 26 and result.skipped == 2
    assert result.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert result.acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert [p.pred for p in result.predictions] == logits.argmax(1).tolist()


def test_a_non_finite_loss_still_stops_at_the_next_logging_step(colour_data, resnet18_file, tmp_path, monkeypatch):
    from core.spec.config import TrainConfig
    from core.training.run import train
    from tests.serving.test_bad_input import NanLoss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NanLoss)  # a diverged training
    records = list(train(TrainConfig(arch="resnet18", weights=str(resnet18_file), data_root=str(colour_data),
                                     freeze="all", batch_size=2, log_every=3, num_workers=0, epochs=3),
                         tmp_path / "run"))
    final = records[-1]
    assert final.status == "failed" and "the loss became" in final.reason and "batch 3" in final.reason
    assert not [r for r in records if r.type == "epoch"]


def test_reading_the_loss_back_is_once_per_logging_step(colour_data, lite0_file, tmp_path, monkeypatch):
    """On a GPU every read of a tensor waits for all queued work: count the reads on the CPU."""
    from core.spec.config import TrainConfig
    from core.training.run import train

    original = torch.Tensor.item

    def reads_with(log_every: int) -> tuple[int, int]:
        reads = []
        monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or original(self))
        records = list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file),
                                         data_root=str(colour_data), epochs=1, batch_size=2, log_every=log_every,
                                         num_workers=0, val_ratio=0, recipe="single"), tmp_path / f"run{log_every}"))
        monkeypatch.setattr(torch.Tensor, "item", original)
        return len(reads), len([r for r in records if r.type == "batch"])

    every_batch, logged_6 = reads_with(1)
    every_third, logged_2 = reads_with(3)
    assert (logged_6, logged_2) == (6, 2)  # 12 train images, batch 2: 6 batches
    # two reads per logging step (the running sum, the batch's loss) and nothing per batch otherwise
    assert every_batch - every_third == 2 * (6 - 2)


def test_our_sgd_steps_exactly_like_torchs():
    from core.platform.accel import SGD

    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        x = torch.randn(4, 5)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_cached_run_never_imports_torch_dynamo(colour_data, lite0_file, tmp_path):
    """torch._dynamo costs about a second of every short run's start-up; a run that does not compile needs none."""
    import subprocess
    import sys

    script = ("import sys\nfrom core.spec.config import TrainConfig\nfrom core.training.run import train\n"
              f"cfg = TrainConfig(arch='efficientnet_lite0', weights={str(lite0_file)!r}, "
              f"data_root={str(colour_data)!r}, epochs=2, num_workers=0)\n"
              f"final = list(train(cfg, {str(tmp_path / 'run')!r}))[-1]\n"
              "print(final.status, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["completed", "False"], out.stdout + out.stderr


def test_the_gpu_decoding_path_gives_the_same_features_run_on_the_cpu(tmp_path, lite0_file):
    """nvJPEG is not here, but the same path (raw bytes from the workers, decoding after the batch,
    PIL for what libjpeg declines) runs with the CPU as its device and must match the usual one."""
    import random as _random

    from PIL import Image

    from core.data.datasets import build_transform
    from core.data.demo import draw_shape
    from core.features.cache import compute_frozen_outputs
    from core.models.surgery import adapt_model
    from core.platform.accel import inference_copy
    from core.spec.archs import get_arch

    rng = _random.Random(0)
    samples = []
    for k in range(5):
        draw_shape(("circle", "star")[k % 2], rng, size=(320, 240)).save(tmp_path / f"{k}.jpg", quality=90)
        samples.append((str(tmp_path / f"{k}.jpg"), k % 2))
    Image.new("RGB", (50, 40), (200, 10, 10)).save(tmp_path / "red.png")
    Image.new("CMYK", (60, 40), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "garbled.jpg").write_bytes(good[:200] + bytes(len(good) - 200))  # a header, then zeros
    samples += [(str(tmp_path / "red.png"), 0), (str(tmp_path / "cmyk.jpg"), 1), (str(tmp_path / "broken.jpg"), 0),
                (str(tmp_path / "garbled.jpg"), 1)]
    model, report = adapt_model("efficientnet_lite0", 2, weights=lite0_file, freeze="head")
    model = inference_copy(model)
    transform = build_transform(get_arch("efficientnet_lite0").transforms())

    def features(gpu_decode):
        gen = compute_frozen_outputs(model, report.head_name, samples, transform, device=torch.device("cpu"),
                                  batch_size=4, gpu_decode=gpu_decode)
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value

    usual, deferred = features(False), features(True)
    assert usual.skipped == deferred.skipped
    assert deferred.indices.tolist() == usual.indices.tolist()
    assert {0, 1, 2, 3, 4, 5, 6} <= set(usual.indices.tolist()) and 7 not in usual.indices.tolist()
    torch.testing.assert_close(deferred.features, usual.features, rtol=0, atol=1e-4)
