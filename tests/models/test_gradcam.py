"""Grad-CAM: after a short run on the demo shapes, the heat map points at the shape."""
import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from core.data.demo import SHAPES, draw_shape_with_mask, generate_demo
from core.inference.predict import Predictor
from core.models.explain import class_index, explain, model_view
from core.platform.errors import ConfigError
from core.spec.config import TrainConfig
from core.training.run import train
from tests.cli.test_cli import _one_error_line, run_cli


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory, lite0_file):
    """EfficientNet-Lite0, pretrained, head only, 5 epochs on 80 demo images (about 10 s)."""
    tmp = tmp_path_factory.mktemp("cam")
    data = generate_demo(tmp / "shapes", per_class=(16, 16), seed=1)
    records = list(train(TrainConfig(arch="efficientnet_lite0", weights=str(lite0_file), data_root=str(data),
                                     epochs=5, num_workers=0, lr=0.01), tmp / "run"))
    assert records[-1].status == "completed" and records[-1].test_acc >= 0.8
    return tmp / "run"


def _fresh_shapes(n: int):
    rng = random.Random(7)  # pictures the run never saw
    return [(SHAPES[i % len(SHAPES)], *draw_shape_with_mask(SHAPES[i % len(SHAPES)], rng)) for i in range(n)]


@pytest.mark.slow
def test_the_heat_map_falls_mostly_on_the_shape(shapes_run):
    predictor = Predictor.load(shapes_run)
    inside, concentration = [], []
    for shape, image, mask in _fresh_shapes(10):
        explanation = explain(predictor, image)
        assert explanation.class_name == shape and explanation.heatmap.shape == (224, 224)
        assert 0.0 <= float(explanation.heatmap.min()) and float(explanation.heatmap.max()) <= 1.0
        seen = model_view(predictor.transform(mask.convert("RGB")), predictor.transform).convert("L")
        area = float((np.array(seen) > 127).mean())
        # A map cell covers 32×32 pixels (7×7 cells): count the shape grown by half a cell as inside.
        inside.append(explanation.mass_inside(seen.filter(ImageFilter.MaxFilter(33))))
        concentration.append(explanation.mass_inside(seen) / area)  # 1.0 for a map spread evenly
    assert np.mean(inside) > 0.55, inside
    assert np.mean(concentration) > 2.0, concentration


def test_any_class_can_be_explained_and_the_overlay_is_the_models_view(shapes_run):
    predictor = Predictor.load(shapes_run)
    shape, image, _ = _fresh_shapes(1)[0]
    top = explain(predictor, image)
    other = explain(predictor, image, class_index(predictor.classes, "square" if shape != "square" else "circle"))
    assert other.class_name != top.class_name and other.probability < top.probability
    assert not np.allclose(other.heatmap.numpy(), top.heatmap.numpy())
    overlay = top.overlay()
    assert overlay.size == top.view.size == (224, 224) and overlay.mode == "RGB"
    assert np.abs(np.asarray(overlay, dtype=int) - np.asarray(top.view, dtype=int)).mean() > 5  # colour was added
    with pytest.raises(ConfigError, match="not one of this model's classes"):
        class_index(predictor.classes, "hexagon")


@pytest.mark.slow
def test_cli_writes_the_cam_png(shapes_run, tmp_path):
    shape, image, _ = _fresh_shapes(1)[0]
    image.save(tmp_path / "in.jpg")
    result = run_cli("predict", shapes_run, tmp_path / "in.jpg", "--cam", tmp_path / "cam.png")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["cam"]["class"] == out["predictions"][0]["class"] == shape
    assert Image.open(tmp_path / "cam.png").size == (224, 224)
    line = _one_error_line(run_cli("predict", shapes_run, tmp_path / "in.jpg", "--cam", tmp_path / "cam.jpg"))
    assert "ending in .png" in line
    line = _one_error_line(run_cli("predict", shapes_run, tmp_path / "in.jpg", "--cam", tmp_path / "c.png",
                                   "--cam-class", "hexagon"))
    assert "hexagon" in line and "circle" in line
