import pytest
import torch
from PIL import Image

from core.data.datasets import build_transform
from core.models.surgery import adapt_model, set_train_mode, trainable_parameters
from core.platform.errors import ConfigError
from core.spec.archs import ARCHITECTURES, imagenet_categories


def test_resnet18_loads_pretrained_body_and_gets_a_new_head(resnet18_file):
    file_state = torch.load(resnet18_file, weights_only=True)
    model, report = adapt_model("resnet18", 3, weights=resnet18_file, seed=0)
    state = model.state_dict()
    assert report.popped_keys == ["fc.weight", "fc.bias"]
    assert report.dropped_keys == []
    assert report.missing_keys == ["fc.weight", "fc.bias"]
    assert report.unexpected_keys == []
    assert report.loaded_keys == len(file_state) - 2
    for key, value in file_state.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(state[key], value), key
    assert state["fc.weight"].shape == (3, 512)
    assert report.head_before == "Linear(512 → 1000)" and report.head_after == "Linear(512 → 3)"
    assert "(fc): Linear(in_features=512, out_features=1000" in report.architecture_before
    assert "(fc): Linear(in_features=512, out_features=3" in report.architecture_after


def test_keys_the_model_lacks_are_dropped(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    _, report = adapt_model("resnet18", 2, weights=path)
    assert report.dropped_keys == ["extra.weight"]


def test_head_only_freezes_everything_but_the_head(resnet18_file):
    model, report = adapt_model("resnet18", 4, weights=resnet18_file, freeze="head")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert [p.name for p in report.trainable] == trainable
    assert report.trainable_count == 512 * 4 + 4
    assert report.frozen_count == sum(p.numel() for p in model.parameters()) - report.trainable_count


def test_only_the_head_changes_after_a_training_step(resnet18_file):
    model, report = adapt_model("resnet18", 2, weights=resnet18_file, freeze="head", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1, momentum=0.9)
    set_train_mode(model, report.trained_modules)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_freeze_all_trains_everything(resnet18_file):
    model, report = adapt_model("resnet18", 2, weights=resnet18_file, freeze="all")
    assert all(p.requires_grad for p in model.parameters())
    assert report.frozen == []


def test_no_weights_means_random_initialisation():
    _, report = adapt_model("resnet18", 2)
    assert report.weights_source == "random initialisation" and not report.pretrained
    assert report.loaded_keys == 0
    assert any("random initialisation" in n for n in report.notes)


@pytest.mark.parametrize("head_variant, head_name, popped", [
    ("replace", "classifier.6", ["classifier.6.weight", "classifier.6.bias"]),
    ("add_outside", "add_Linear", []),
    ("add_inside", "classifier.add_Linear", []),
])
@pytest.mark.slow
def test_vgg16_variants_give_n_outputs(head_variant, head_name, popped, tmp_path):
    torch.manual_seed(0)
    from torchvision.models import vgg16

    path = tmp_path / "vgg16.pth"
    torch.save(vgg16(weights=None).state_dict(), path)
    model, report = adapt_model("vgg16", 7, weights=path, head_variant=head_variant)
    model.eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 7)
    assert report.head_name == head_name
    assert report.popped_keys == popped
    assert [p.name for p in report.trainable] == [f"{head_name}.weight", f"{head_name}.bias"]
    assert report.missing_keys == [f"{head_name}.weight", f"{head_name}.bias"]


def test_unknown_freeze_mode_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="freeze mode 'half' does not exist; allowed: head, last_block, all"):
        adapt_model("resnet18", 2, freeze="half")


def test_unknown_variant_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="allowed: replace, add_outside, add_inside"):
        adapt_model("vgg16", 2, head_variant="sideways")
    with pytest.raises(ConfigError, match="allowed: resnet18, vgg16, efficientnet_lite0"):
        adapt_model("alexnet", 2)


def test_efficientnet_lite0_real_weights_load_without_surprises(lite0_file):
    file_state = torch.load(lite0_file, weights_only=True)
    model, report = adapt_model("efficientnet_lite0", 5, weights=lite0_file)
    assert report.popped_keys == ["_fc.weight", "_fc.bias"]
    assert report.missing_keys == ["_fc.weight", "_fc.bias"]
    assert report.dropped_keys == [] and report.unexpected_keys == []
    assert report.loaded_keys == len(file_state) - 2
    assert report.head_before == "Linear(1280 → 1000)" and report.head_after == "Linear(1280 → 5)"


def test_efficientnet_lite0_pretrained_recognises_a_cat(lite0_file):
    from skimage import data

    spec = ARCHITECTURES["efficientnet_lite0"]
    model = spec.build()
    assert not model.load_state_dict(torch.load(lite0_file, weights_only=True)).missing_keys
    model.eval()
    x = build_transform(spec.transforms())(Image.fromarray(data.chelsea()))[None]
    with torch.inference_mode():
        top5 = model(x).softmax(1)[0].topk(5).indices.tolist()
    categories = imagenet_categories()
    names = [categories[i] for i in top5]
    assert any(n in ("tabby", "tiger cat", "Egyptian cat") for n in names[:2]), names


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_last_block_mode_trains_the_tables_last_stage_and_the_head(arch):
    spec = ARCHITECTURES[arch]
    model, report = adapt_model(arch, 3, freeze="last_block", seed=0)
    names = dict(model.named_modules())
    assert spec.cam_layer in names and all(m in names for m in spec.last_stage)
    assert report.trained_modules == [*spec.last_stage, report.head_name]
    assert set(report.modes) == {"head", "last_block", "all"} and report.modes["all"] == [""]
    trained = {p.name for p in report.trainable}
    assert trained and all(any(n == m or n.startswith(m + ".") for m in report.trained_modules) for n in trained)
    assert f"{report.head_name}.weight" in trained
    assert any(n.startswith(spec.cut + ".") for n in trained)  # the stage's first module trains too
    # the same parameters, seen from the page's per-mode columns
    from core.models.surgery import trains_in
    assert {p.name for p in report.parameters if trains_in(report.modes["last_block"], p.name)} == trained
    assert all(trains_in(report.modes["all"], p.name) for p in report.parameters)
    head_only = adapt_model(arch, 3, freeze="head", seed=0)[1]
    assert head_only.trainable_count < report.trainable_count < head_only.trainable_count + head_only.frozen_count
