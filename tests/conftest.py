import os
import random
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def make_colour_dataset(root: Path, per_class: int = 10, size: int = 64, classes=("blue", "red"),
                        seed: int = 0) -> Path:
    """An easy, learnable dataset: each class is a colour, with noise."""
    rng = random.Random(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = COLOURS[name]
            colour = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base)
            img = Image.new("RGB", (size, size), colour)
            for _ in range(20):
                x, y = rng.randrange(size), rng.randrange(size)
                img.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
            img.save(root / name / f"{name}_{i:02d}.png")
    return root


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path, tmp_path_factory, monkeypatch):
    """Every test gets its own workspace and torch hub cache; nothing touches the user's.

    The app may read the test's own folder, the session's shared fixtures (weights files) and the repo.
    """
    monkeypatch.setenv("TLD_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    shared = tmp_path_factory.getbasetemp() / "shared"
    monkeypatch.setenv("TLD_ALLOWED_ROOTS", os.pathsep.join([str(tmp_path), str(shared), str(ROOT)]))
    monkeypatch.delenv("TLD_DATA_ROOT", raising=False)
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
    yield


def _live_workers(runs_folder) -> dict[str, int]:
    """Training processes at work on runs in ``runs_folder``, whoever started them (this process, or a worker
    that started the next queued run as it ended): run folder → pid."""
    from core.platform.process import process_start_id
    from core.runs.listing import list_runs
    from core.runs.rundir import DamagedRun, RunDir
    from core.runs.status import read_worker_state

    live = {}
    for info in list_runs(runs_folder):
        try:
            state = read_worker_state(RunDir(info.path))
        except DamagedRun:
            continue
        if (state and state.pid and state.pid != os.getpid() and info.busy
                and process_start_id(state.pid) == state.pid_start):
            live[str(info.path)] = state.pid
    return live


@pytest.fixture(autouse=True)
def no_worker_left_behind():
    """Kill every training process a test started, pass or fail, and fail a test that left one running:
    its own children, and the workers those started in the test's workspace (grandchildren)."""
    from core.jobs import queue as runs
    from core.platform.workspace import runs_dir

    before, folder = set(runs.children()), runs_dir()  # the folder now: a test may change the settings
    yield
    leaked = []
    if not wait_until(lambda: not _live_workers(folder), 15):  # a run that has just ended is still closing
        leaked = sorted(_live_workers(folder))
        for path in leaked:
            runs.kill_worker(path)
    for path, proc in runs.children().items():
        if path in before:
            continue
        try:
            proc.wait(timeout=10)  # a run that has just ended is still closing its interpreter
            continue
        except subprocess.TimeoutExpired:
            leaked.append(path)
        runs.kill_worker(path)
        proc.wait(timeout=30)
    assert not leaked, f"the test left training processes running: {leaked}"


@pytest.fixture
def colour_data(tmp_path) -> Path:
    return make_colour_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def resnet18_file(tmp_path_factory) -> Path:
    """A 'pretrained' resnet18 file: a seeded torchvision model's state dict."""
    from torchvision.models import resnet18

    torch.manual_seed(1234)
    folder = tmp_path_factory.getbasetemp() / "shared"
    folder.mkdir(exist_ok=True)
    path = folder / "resnet18_pretrain.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def lite0_file() -> Path:
    from core.spec.archs import ARCHITECTURES

    return Path(ARCHITECTURES["efficientnet_lite0"].packaged.path())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Marks a test whose body failed, so a fixture can keep what it saw (the browser test's screen)."""
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
    return report


def app_test(page: str | None = None, **query):
    """The dashboard in Streamlit's AppTest, run once (with ``query`` as URL parameters), then on ``page``."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = str(v)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.fixture
def small_root(tmp_path, monkeypatch):
    """A 2-class colour dataset (4 images each), the workspace's data root."""
    root = make_colour_dataset(tmp_path / "data", per_class=4)
    monkeypatch.setenv("TLD_DATA_ROOT", str(root))
    return root
