"""Export for use outside the app: TorchScript and ONNX, each with a sidecar, matching our own probabilities."""
import json

import numpy as np
import pytest
import torch

from core.data.images import open_image
from core.inference.export import export
from core.inference.predict import Predictor
from core.spec.config import TrainConfig
from core.training.run import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_data_module, lite0_file):
    run = tmp_path_factory.mktemp("export") / "run"
    list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(colour_data_module),
                           epochs=3, lr=0.05, num_workers=0), run))
    return run


@pytest.fixture(scope="module")
def colour_data_module(tmp_path_factory):
    from tests.conftest import make_colour_dataset

    return make_colour_dataset(tmp_path_factory.mktemp("colours") / "c", per_class=6)


def _inputs(predictor, folder) -> torch.Tensor:
    paths = sorted(folder.rglob("*.png"))[:8]
    return torch.stack([predictor.transform(open_image(p)) for p in paths])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_models_give_our_probabilities_without_project_code(fmt, trained, colour_data_module, tmp_path):
    model_path, side_path = export(trained, fmt, tmp_path / f"m.{fmt}")
    side = json.loads(side_path.read_text())
    assert side["classes"] == ["blue", "red"] and side["input"]["shape"] == [3, 224, 224]
    assert side["architecture"] == "efficientnet_lite0" and side["test_accuracy"] is not None
    assert side["preprocessing"]["resize_shorter_side"] == 256 and len(side["preprocessing"]["mean"]) == 3
    predictor = Predictor.load(trained)
    x = _inputs(predictor, colour_data_module)
    assert len(x) == 8
    ours = predictor.batch_probabilities(x)  # calibrated, as the app shows them
    assert side["temperature"] == predictor.temperature and side["temperature"] > 0
    if fmt == "torchscript":
        logits = torch.jit.load(str(model_path))(x)
    else:
        import onnx
        import onnxruntime

        onnx.checker.check_model(str(model_path))
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {"image": x.numpy().astype(np.float32)})[0])  # batch axis dynamic
    theirs = (logits / side["temperature"]).softmax(1)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_export_command_and_a_bad_format(trained, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "core", "export", str(trained), "--format", "onnx", "--out",
                          str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.onnx").is_file() and (tmp_path / "x.onnx.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "core", "export", str(trained), "--format", "tflite"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
