"""Large JPEGs decode at reduced scale (libjpeg's DCT scaling) wherever they are about to be shrunk, never
below what the preprocessing keeps; orientation, quality and the feature cache's key follow."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.datasets import DeferredJpegDataset, ListDataset, build_transform, training_transform
from core.data.demo import phone_photo
from core.data.images import dct_scale, open_image, thumbnail_jpeg
from core.spec.archs import get_arch

LITE0 = get_arch("efficientnet_lite0").transforms()  # resize 256, crop 224


def _jpeg(path, size, colour=None) -> str:
    image = phone_photo("star", random.Random(1), size) if colour is None else Image.new("RGB", size, colour)
    image.save(path, quality=90)
    return str(path)


def test_the_reduction_is_the_largest_that_keeps_the_target(tmp_path):
    target = build_transform(LITE0).decode_min_side
    assert target == 256
    small = _jpeg(tmp_path / "small.jpg", (300, 200))
    assert dct_scale(300, 200, target) == 1 and open_image(small, min_side=target).size == (300, 200)
    big = _jpeg(tmp_path / "big.jpg", (4032, 3024))
    assert open_image(big, min_side=256).size == (504, 378)  # 1/8
    assert open_image(big, min_side=400).size == (1008, 756)  # 1/4: 1/8 would give 378 < 400
    assert open_image(big, min_side=2000).size == (4032, 3024)
    assert open_image(big).size == (4032, 3024)  # no target: full scale, as before
    assert open_image(big, min_side=256).info["decoded_from"] == (4032, 3024)
    png = tmp_path / "big.png"
    Image.open(big).save(png)
    assert open_image(png, min_side=256).size == (4032, 3024)  # other formats decode in full
    # each preprocessing asks for what it keeps: a random crop of 8% of the area needs more pixels
    assert training_transform(LITE0, "crop+flip").decode_min_side == 792
    assert build_transform(LITE0, letterbox=True).decode_min_side == 224


def test_an_exif_rotated_phone_photo_stays_upright(tmp_path):
    # left half red, right half blue, stored sideways with EXIF orientation 6 (rotate 90° clockwise to view)
    pixels = np.zeros((1512, 2016, 3), np.uint8)
    pixels[:, :1008] = (220, 20, 20)
    pixels[:, 1008:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    full, reduced = open_image(path), open_image(path, min_side=256)
    assert full.size == (1512, 2016) and reduced.size == (378, 504)  # upright: taller than wide
    assert reduced.info["decoded_from"] == (1512, 2016)
    top, bottom = np.asarray(reduced)[:100].mean((0, 1)), np.asarray(reduced)[-100:].mean((0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # the red half is on top, as in the full decode
    assert np.abs(np.asarray(full.resize(reduced.size, Image.BOX), np.float32)
                  - np.asarray(reduced, np.float32)).mean() < 3


def test_datasets_send_large_jpegs_to_the_reduced_decode(tmp_path):
    small = _jpeg(tmp_path / "small.jpg", (500, 375))
    big = _jpeg(tmp_path / "big.jpg", (2016, 1512))
    tf = build_transform(LITE0)
    for dataset in (ListDataset([(small, 0), (big, 1)], tf),):
        assert [tuple(dataset[i][0].shape) for i in range(2)] == [(3, 224, 224)] * 2
    deferred = DeferredJpegDataset([(small, 0), (big, 1)], tf)  # the GPU's dataset
    assert deferred[0][0][0] == "jpeg"  # small: its bytes, for nvJPEG
    assert deferred[1][0][0] == "tensor" and deferred[1][0][1].shape == (3, 224, 224)  # big: decoded here, reduced
    assert thumbnail_jpeg(big, 112)[:2] == b"\xff\xd8"


def test_the_feature_cache_identity_says_how_images_are_decoded():
    from core.features.cache import extractor_identity

    tf = build_transform(LITE0)
    assert "decode=dct-reduced" in repr(tf)
    keys = {extractor_identity(arch="efficientnet_lite0", head_variant="replace", weights=None, transform=t)
            for t in (repr(tf), repr(tf).replace(", decode=dct-reduced", ""))}
    assert len(keys) == 2  # features cached before reduced decoding are not reused for it


@pytest.mark.slow
def test_features_of_the_reduced_decode_stay_within_the_stated_bound(tmp_path, lite0_file):
    """README: on photo-like 12-megapixel JPEGs the reduced decode's backbone features keep a cosine
    similarity of at least 0.98 with the full decode's (0.990 to 0.999 measured over 8 photos)."""
    from core.models.surgery import adapt_model

    model, report = adapt_model("efficientnet_lite0", 2, weights=str(lite0_file), freeze="all")
    model.eval()
    captured = {}
    head = dict(model.named_modules())[report.head_name]
    head.register_forward_hook(lambda module, inputs, output: captured.__setitem__("x", inputs[0]))
    tf = build_transform(LITE0)
    rng = random.Random(0)
    for k, shape in enumerate(("circle", "star", "triangle")):
        path = tmp_path / f"{k}.jpg"
        phone_photo(shape, rng, (2016, 1512)).save(path, quality=90)
        features = []
        for min_side in (None, tf.decode_min_side):
            image = open_image(path, min_side=min_side)
            with torch.no_grad():
                model(tf(image).unsqueeze(0))
            features.append(captured["x"][0])
        assert open_image(path, min_side=tf.decode_min_side).size == (504, 378)
        similarity = torch.nn.functional.cosine_similarity(*features, dim=0).item()
        assert similarity >= 0.98, (shape, similarity)
