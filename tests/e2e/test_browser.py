"""End to end in real headless Chromium: the README's app, all pages, one training run, one prediction."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"),
                                reason="Chromium is not installed (scripts/setup.sh dev installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(tmp_path: Path, **env: str):
    """A fresh Streamlit server of the app (the README's command) on a free port, with ``env`` added; yields
    its URL and workspace. Stopped afterwards, with any training processes it started."""
    port = _free_port()
    env = {**os.environ, "TLD_WORKSPACE": str(tmp_path / "workspace"), **env}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
                             "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200
        except urllib.error.HTTPError as error:
            return error.code == 401  # up, behind the password gate
        except OSError:
            return False

    if not wait_until(healthy, 60, interval=0.5):
        proc.kill()
        proc.wait()
        log.close()
        raise AssertionError((tmp_path / "server.log").read_text())
    try:
        yield url, tmp_path / "workspace"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        # The server's training processes run in their own sessions: end any that are still at work.
        from core.jobs.queue import kill_worker
        from core.runs.listing import read_run
        for run in (tmp_path / "workspace" / "runs").glob("*"):
            if read_run(run).active:
                kill_worker(run)


@pytest.fixture
def server(tmp_path):
    with serving(tmp_path) as served:
        yield served


@pytest.fixture
def page(request, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        if getattr(request.node, "call_failed", False):  # what was on screen, for a failure seen only in CI
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"--- page at failure ({page.url}); screenshot {tmp_path / 'failure.png'}\n"
                  + page.locator("body").inner_text()[-6000:])
            log = tmp_path / "server.log"
            if log.is_file():
                print("--- server log (end)\n" + log.read_text(errors="replace")[-4000:])
        browser.close()


def _shot(page, name):
    from core.platform.settings import settings

    folder = settings().screenshots
    if folder:
        _settled(page)
        page.set_viewport_size({"width": 1400, "height": 3200})  # Streamlit scrolls inside, so grow the window
        _settled(page)
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))
        page.set_viewport_size({"width": 1400, "height": 1000})


DRAWN = """() => {
    const shown = el => el.getClientRects().length > 0;  // charts in a tab not chosen are not drawn until shown
    const charts = [...document.querySelectorAll('[data-testid=stVegaLiteChart]')].filter(shown);
    return [...document.images].filter(shown).every(img => img.complete)
        && charts.every(chart => chart.querySelector('svg path, canvas'));
}"""


def _settled(page):
    """The script run has ended, every image has loaded and every chart has drawn (they draw after the run)."""
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden")
    page.wait_for_function(DRAWN)


def _go(page, title):
    page.get_by_role("link", name=title).first.click()


@pytest.mark.slow
def test_walk_all_pages_train_and_predict(server, page):
    url, workspace = server
    page.set_default_timeout(120_000)
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    page.get_by_text("Current dataset").wait_for()
    page.get_by_text("5 classes ·").first.wait_for()
    _shot(page, "0-home")

    outside = [u for u in requests if not u.startswith(url) and not u.startswith(("data:", "blob:"))]
    assert outside == [], outside  # nothing fetched from any other host (offline use, privacy)

    _go(page, "1 · Dataset")
    page.get_by_text("Samples").wait_for()
    page.get_by_role("button", name="Write train.txt / val.txt / test.txt").click()
    page.get_by_text("Wrote ").wait_for()
    assert (next((workspace / "lists").iterdir()) / "train.txt").is_file()
    assert (next((workspace / "lists").iterdir()) / "val.txt").is_file()
    _shot(page, "1-dataset")

    # 2 · Check the data: the check runs, and a box dragged on the map shows the images inside it.
    _go(page, "2 · Check the data")
    page.get_by_role("button", name="Check the data").click()
    page.get_by_role("tab", name="Map").wait_for(timeout=240_000)
    page.get_by_text("Largest ÷ smallest class").wait_for()
    page.get_by_role("tab", name="Map").click()
    chart = page.locator("[data-testid=stVegaLiteChart]:visible").first
    chart.locator("svg path").first.wait_for()  # the chart draws after the script run
    _settled(page)
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.05)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.move(box["x"] + box["width"] * 0.95, box["y"] + box["height"] * 0.95, steps=8)
    page.mouse.up()
    page.get_by_text(re.compile(r"^[1-9]\d* images? selected$")).wait_for(timeout=60_000)
    page.locator("[data-testid=stImage]:visible").first.wait_for(timeout=30_000)  # the selected images, as thumbnails
    _shot(page, "1b-check")

    _go(page, "3 · Model surgery")
    page.get_by_text("Architecture before and after").wait_for()
    page.get_by_text("_fc.weight").first.wait_for()
    _shot(page, "2-surgery")

    _go(page, "4 · Training")
    # 1 stage-1 epoch instead of 5 (the default recipe is staged, 1 + 3 epochs; the from-scratch twin trains as
    # many): the slider moved as a person would, by keyboard
    epochs = page.get_by_role("slider", name="Stage 1 epochs (head)")  # Streamlit's slider: an <input type=range>
    epochs.focus()
    for _ in range(4):
        epochs.press("ArrowLeft")
    assert wait_until(lambda: epochs.input_value() == "1", 30)
    _settled(page)  # the rerun that takes the new value (the click below would carry it anyway)
    page.get_by_role("button", name="Start training").click()
    # The results' own content, not their heading: a live-view fragment's last tick can race the full rerun
    # that draws the results, and leave the heading out until the next rerun (seen once in CI, under load).
    page.get_by_text(re.compile(r"^Per-class test accuracy")).wait_for(timeout=240_000)
    # the Results say the test figure once, with its interval; the curves are validation's
    page.get_by_text(re.compile(r"^Test accuracy \d+\.\d% \(95% CI \d+\.\d–\d+\.\d%, [\d,]+ images\)")).wait_for()
    page.get_by_text("Per epoch: loss and validation accuracy").first.wait_for()
    assert "run=" in page.url
    page.get_by_text("Device: CPU").first.wait_for()
    # The confusion matrix answers a click: the bottom-right cell (triangles called triangles) lists its images.
    # Vega draws the cells as SVG paths in data order (true class, then predicted); the click lands in the
    # cell's corner, beside the count written in its middle.
    matrix = page.locator("[class*='st-key-tr_cells_'] [data-testid=stVegaLiteChart]").first
    matrix.wait_for()
    cells = matrix.locator("g.mark-rect path")
    assert wait_until(lambda: cells.count() == 25, 30)
    cells.nth(24).click(position={"x": 6, "y": 6})
    page.get_by_text(re.compile(r"^triangle recognised as triangle: [1-9]\d* test images?$")).wait_for(timeout=60_000)
    page.locator("[data-testid=stImage]:visible").first.wait_for(timeout=30_000)
    _shot(page, "3-training")

    # The recipe's claim, one click away: the same run from scratch, overlaid on the pretrained one.
    page.get_by_role("button", name="Train the same from scratch (every layer) to compare").click()
    # While the twin runs, the runs list updates by itself: its epochs count goes up with no click.
    page.get_by_text(re.compile(r"Running now: .*\(running, 0/4 epochs\)")).wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"Running now: .*\(running, [123]/4 epochs\)")).wait_for(timeout=300_000)
    assert page.get_by_role("button", name="Stop").count() == 1  # the app's Stop only
    # Once the twin ends, its page shows the pair: both best accuracies and their overlaid test curves.
    page.get_by_text("Pretrained vs from scratch", exact=True).first.wait_for(timeout=300_000)
    page.get_by_text("Same data, split, seed and settings.").first.wait_for()
    page.get_by_text("validation accuracy per epoch", exact=True).first.wait_for()
    page.get_by_text(re.compile(r"^Pretraining's gain, paired on the same test images")).wait_for()
    assert page.get_by_role("button", name=re.compile("to compare$")).count() == 0  # the pair exists: no button
    summaries = [json.loads(p.read_text()) for p in (workspace / "runs").glob("*/summary.json")]
    configs = [json.loads(p.read_text()) for p in (workspace / "runs").glob("*/config.json")]
    assert len(summaries) == 2 and {bool(c["weights"]) for c in configs} == {True, False}
    best = {bool(json.loads((p.parent / "config.json").read_text())["weights"]): json.loads(p.read_text())["test_acc"]
            for p in (workspace / "runs").glob("*/summary.json")}
    assert best[True] > best[False] + 0.3, best
    _shot(page, "3b-comparison")

    _go(page, "5 · Prediction")
    page.get_by_text("Upload an image (png").wait_for()
    image = next((workspace / "datasets" / "demo-shapes" / "star").glob("*.jpg"))
    page.locator("input[type=file]").first.set_input_files(str(image))
    page.get_by_text("probability").first.wait_for()
    page.get_by_text("Prediction", exact=True).first.wait_for()
    assert "%" in page.locator("[data-testid=stMetricDelta]").first.inner_text()
    # Beside the upload: its Grad-CAM overlay, a real image that has loaded
    overlay = page.locator("[data-testid=stImage]").filter(has_text="Grad-CAM for ").locator("img").first
    overlay.wait_for()
    assert wait_until(lambda: overlay.evaluate("img => img.complete && img.naturalWidth") == 224, 30)
    page.get_by_text("Export the model").click()
    page.get_by_role("button", name="Prepare TorchScript").wait_for()
    page.get_by_role("button", name="Prepare ONNX").wait_for()
    _shot(page, "4-prediction")
    outside = [u for u in requests if not u.startswith(url) and not u.startswith(("data:", "blob:"))]
    assert outside == [], outside


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="Chromium is not installed")
@pytest.mark.slow
def test_relabel_a_suspect_see_the_version_train_and_find_it_in_the_runs_table(tmp_path, page):
    """Issue 33's walk: a photo set with flipped labels; relabel the top suspect where the check shows it, see the
    version on the Dataset page, train, and see the version in the runs table. The folder is never written."""
    from core.data.planted import generate_planted
    from tests.data.test_versions import folder_digest

    planted = generate_planted(tmp_path / "photos", per_class=24, copies=3, flip_share=0.08, seed=1)
    before = folder_digest(planted.root)
    with serving(tmp_path, TLD_DATA_ROOT=str(planted.root)) as (url, workspace):
        page.goto(f"{url}/check")
        page.get_by_role("button", name="Check the data").click()
        page.get_by_role("tab", name=re.compile(r"^Label issues")).click(timeout=240_000)
        relabel = page.get_by_role("button", name=re.compile(r"^Relabel as ")).first
        relabel.wait_for()
        _settled(page)
        _shot(page, "33-check-suspects")
        relabel.click()
        page.get_by_text(re.compile(r"^v1: relabel .* as ")).wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"relabelled as \w+ \(v1\)")).first.wait_for()
        _settled(page)
        _shot(page, "33-check-relabelled")

        _go(page, "1 · Dataset")
        page.get_by_text("Dataset version", exact=True).wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"^v1 · 1 image relabelled")).wait_for()
        _settled(page)
        _shot(page, "33-dataset-version")

        _go(page, "4 · Training")
        page.get_by_role("button", name="Start training").click(timeout=60_000)
        page.get_by_text(re.compile(r"^Per-class test accuracy")).wait_for(timeout=240_000)
        page.get_by_text("All runs", exact=True).wait_for()
        table = page.locator("[data-testid=stDataFrame]").last
        table.scroll_into_view_if_needed()
        _settled(page)
        _shot(page, "33-training-runs")
        runs = [p for p in (workspace / "runs").iterdir() if p.is_dir()]
        config = json.loads((runs[0] / "config.json").read_text())
        assert config["dataset_version"] == "v1" and len(config["relabel"]) == 1
    assert folder_digest(planted.root) == before


def test_the_switch_to_an_offline_architecture_sticks_in_the_box_through_reruns(server, page):
    """Clicked in a real browser, "Use efficientnet_lite0 instead" must set the Architecture box itself (AppTest
    keeps no browser-side widget state, so it could not see the box keep the old value)."""
    url, _ = server
    page.goto(f"{url}/surgery?arch=resnet18")
    page.get_by_role("button", name="Use efficientnet_lite0 instead").click()
    # The box shows its choice in its input's value (the label's text is "Architecture").
    box = page.locator("[data-testid=stSelectbox]").filter(has_text="Architecture").first.locator("input").first
    page.wait_for_function("box => box.value.startsWith('efficientnet_lite0')", arg=box.element_handle(),
                           timeout=60_000)
    for mode in ("the body's last stage and the head train", "every layer trains",
                 "only the new head trains"):
        page.get_by_text(mode, exact=False).first.click()
        page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden", timeout=60_000)
        assert box.input_value().startswith("efficientnet_lite0"), mode
    page.get_by_role("link", name="4 · Training").first.click()
    page.get_by_text("Start training").first.wait_for(timeout=60_000)
    assert "from scratch" not in page.locator("body").inner_text()


@pytest.mark.slow
def test_a_staged_fine_tune_shows_both_stages_in_its_curves_and_results(tmp_path, page):
    """Issue 35's walk: the Training page's staged recipe on generated photos; the run's curves mark where stage 2
    begins, the results name the chosen epoch's stage, and the Surgery page shows what each stage trains."""
    from core.data.planted import generate_planted

    planted = generate_planted(tmp_path / "photos", per_class=20, copies=0, flip_share=0.0, seed=2)
    with serving(tmp_path, TLD_DATA_ROOT=str(planted.root)) as (url, workspace):
        page.goto(f"{url}/training")
        page.get_by_text("Staged fine-tune (head, then last stage)").click(timeout=60_000)
        page.get_by_text(re.compile(r"^Stage 1: the head, on cached features")).wait_for()
        page.get_by_role("button", name="Start training").click()
        page.get_by_text(re.compile(r"^Per-class test accuracy")).wait_for(timeout=300_000)
        page.get_by_text(re.compile(r"^stage 1: head only, epochs 1–5; stage 2: last stage \+ head, epochs 6–8")
                         ).wait_for()
        page.get_by_text(re.compile(r"trainable parameters: [\d,]+ in stage 1, [\d,]+ in stage 2")).wait_for()
        page.get_by_text(re.compile(r"· epoch \d \(stage [12]: [a-z +]+\), chosen on validation")).wait_for()
        page.locator("[data-testid=stVegaLiteChart] text", has_text="stage 2 →").first.wait_for()  # the curves' rule
        _settled(page)
        _shot(page, "35-training-staged")
        run = next(p for p in (workspace / "runs").iterdir() if p.is_dir())
        config = json.loads((run / "config.json").read_text())
        assert (config["recipe"], config["epochs"], config["stage2_epochs"]) == ("fine_tune", 5, 3)
        stages = [json.loads(line).get("stage") for line in (run / "metrics.jsonl").read_text().splitlines()
                  if '"type": "epoch"' in line]
        assert stages == [1, 1, 1, 1, 1, 2, 2, 2]

        _go(page, "3 · Model surgery")
        page.get_by_text("The staged fine-tune", exact=False).first.wait_for(timeout=60_000)
        _settled(page)
        _shot(page, "35-surgery-stages")
