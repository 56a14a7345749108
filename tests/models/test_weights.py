import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from core.models.weights import (
    check_hash_prefix,
    download_weights,
    find_weights,
    hub_checkpoint_dir,
    list_sources,
    store_uploaded_weights,
)
from core.platform.errors import UploadError, WeightsError
from core.spec.archs import ARCHITECTURES


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """A tiny HTTP server on 127.0.0.1 serving tmp_path/www; tests never touch the internet."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Files, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _named_by_hash(src: Path, folder: Path, stem: str) -> Path:
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    target = folder / f"{stem}-{digest}.pth"
    target.write_bytes(src.read_bytes())
    return target


def test_sources_are_tried_in_order(resnet18_file):
    spec = ARCHITECTURES["resnet18"]
    kinds = [s.kind for s in list_sources(spec, resnet18_file)]
    assert kinds == ["user file", "hub cache", "hub cache", "download"]
    assert find_weights(spec, resnet18_file).path == str(resnet18_file)
    assert find_weights(spec) is None  # empty hub cache, no user file


def test_hub_cache_is_found_under_the_older_name(resnet18_file):
    import dataclasses

    assert ARCHITECTURES["resnet18"].hub_file_names == ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth")
    cache = hub_checkpoint_dir()
    cache.mkdir(parents=True)
    # Our stand-in file cannot carry the official hash, so name it by its own hash, as the older name.
    older = _named_by_hash(resnet18_file, cache, "resnet18")
    spec = dataclasses.replace(ARCHITECTURES["resnet18"], hub_file_names=("resnet18-f37072fd.pth", older.name))
    found = find_weights(spec)
    assert found.kind == "hub cache" and found.path == str(older)


def test_packaged_weights_are_found_for_efficientnet():
    found = find_weights(ARCHITECTURES["efficientnet_lite0"])
    assert found.kind == "package" and Path(found.path).is_file()


def test_download_with_progress_and_hash_check(http_server, resnet18_file):
    root, base = http_server
    served = _named_by_hash(resnet18_file, root, "resnet18")
    seen = []
    path = download_weights(ARCHITECTURES["resnet18"], url=f"{base}/{served.name}",
                            progress=lambda done, total: seen.append((done, total)))
    assert path == hub_checkpoint_dir() / served.name
    assert path.read_bytes() == resnet18_file.read_bytes()
    assert seen[-1] == (served.stat().st_size, served.stat().st_size)


def test_download_with_a_wrong_hash_is_refused_and_not_kept(http_server, resnet18_file):
    root, base = http_server
    (root / "resnet18-00000000.pth").write_bytes(resnet18_file.read_bytes())
    with pytest.raises(WeightsError, match="damaged or not the official file"):
        download_weights(ARCHITECTURES["resnet18"], url=f"{base}/resnet18-00000000.pth")
    assert not (hub_checkpoint_dir() / "resnet18-00000000.pth").exists()


def test_offline_download_says_so(http_server):
    _, base = http_server
    with pytest.raises(WeightsError, match="404"):
        download_weights(ARCHITECTURES["resnet18"], url=f"{base}/resnet18-abc.pth")
    with pytest.raises(WeightsError, match="offline"):
        download_weights(ARCHITECTURES["resnet18"], url="http://127.0.0.1:9/resnet18-abc.pth", timeout=2)


def test_uploaded_weights_are_checked_and_stored_in_the_cache(resnet18_file):
    spec = ARCHITECTURES["resnet18"]
    stored = store_uploaded_weights(spec, resnet18_file.read_bytes(), "my_resnet.pth")
    assert stored.parent == hub_checkpoint_dir() and stored.is_file()
    found = find_weights(spec)
    assert found.kind == "upload" and found.path == str(stored)
    with pytest.raises(WeightsError, match="does not fit efficientnet_lite0"):
        store_uploaded_weights(ARCHITECTURES["efficientnet_lite0"], resnet18_file.read_bytes(), "x.pth")


def test_hash_prefix_check(tmp_path):
    f = tmp_path / "thing-deadbeef.pth"
    f.write_bytes(b"abc")
    with pytest.raises(WeightsError, match="sha256 starts with"):
        check_hash_prefix(f)
    good = tmp_path / f"thing-{hashlib.sha256(b'abc').hexdigest()[:8]}.pth"
    good.write_bytes(b"abc")
    check_hash_prefix(good)


def test_a_damaged_file_in_the_hub_cache_is_not_used(resnet18_file):
    cache = hub_checkpoint_dir()
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(resnet18_file.read_bytes())  # hash does not match the name
    sources = list_sources(ARCHITECTURES["resnet18"])
    assert not sources[0].available and "damaged or not the official file" in sources[0].detail
    assert find_weights(ARCHITECTURES["resnet18"]) is None


def test_dataset_zip_download_and_extraction(http_server, colour_data, tmp_path):
    import zipfile

    from core.data.uploads import download_dataset

    root, base = http_server
    with zipfile.ZipFile(root / "colours.zip", "w") as z:
        for p in colour_data.rglob("*.png"):
            z.write(p, f"colours/{p.relative_to(colour_data)}")
    seen = []
    extracted = download_dataset(f"{base}/colours.zip", tmp_path / "datasets",
                                 progress=lambda done, total: seen.append(done))
    assert sorted(p.name for p in extracted.iterdir()) == ["blue", "red"]
    assert len(list(extracted.rglob("*.png"))) == 20 and seen
    with pytest.raises(UploadError, match="404"):
        download_dataset(f"{base}/missing.zip", tmp_path / "datasets")


NEW_TORCHVISION = ["resnet34", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "regnet_y_800mf",
                   "vit_b_16"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", NEW_TORCHVISION)
def test_every_torchvision_family_downloads_uploads_and_loads_like_resnet18(arch, http_server, tmp_path):
    import torch

    from core.models.surgery import adapt_model

    spec = ARCHITECTURES[arch]
    root, base = http_server
    torch.save(spec.build().state_dict(), tmp_path / "imagenet.pth")  # shaped like the real file, random values
    served = _named_by_hash(tmp_path / "imagenet.pth", root, arch)
    seen = []
    downloaded = download_weights(spec, url=f"{base}/{served.name}", progress=lambda done, total: seen.append(done))
    assert downloaded.read_bytes() == served.read_bytes() and seen[-1] == served.stat().st_size
    assert find_weights(spec) is None  # not under torchvision's own name (its hash prefix would not match)
    stored = store_uploaded_weights(spec, served.read_bytes(), "mine.pth")
    found = find_weights(spec)
    assert found.kind == "upload" and found.path == str(stored)
    _, report = adapt_model(arch, 4, weights=found.path)
    assert report.popped_keys == [f"{spec.head}.weight", f"{spec.head}.bias"] and not report.dropped_keys
    with pytest.raises(WeightsError, match=f"does not fit {arch}"):
        store_uploaded_weights(spec, _state_bytes(ARCHITECTURES["resnet18"]), "other.pth")  # another family


def _state_bytes(spec) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(spec.build().state_dict(), buffer)
    return buffer.getvalue()
