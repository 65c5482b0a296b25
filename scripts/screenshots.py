"""Screenshots of every page of the running app, for a visual check.

Creates a temporary workspace with the demo dataset and two finished runs, starts
``streamlit run app.py`` on a free port, drives headless Chromium through every page
(and a live training run started from the Home page) and saves PNGs to
``artifacts/screenshots/``: ``<name>.png`` is the 1280x800 viewport, ``<name>-full.png``
the whole page.

    python scripts/screenshots.py [--out artifacts/screenshots] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH, HEIGHT = 1280, 800


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def messy_folder(dest: Path) -> Path:
    """Demo images with the problems the health report finds: a truncated file, a file
    that is not an image, copies across classes and a tiny class."""
    import shutil as sh

    from finetune_core.data import make_demo_folder

    make_demo_folder(dest, classes=3, per_class=14, size=64, seed=1)
    circle = dest / "circle"
    data = (circle / "circle_0000.jpg").read_bytes()
    (circle / "broken_download.jpg").write_bytes(data[: len(data) // 2])
    (circle / "notes.jpg").write_text("not an image")
    sh.copy(circle / "circle_0001.jpg", dest / "square" / "copied_circle.jpg")
    sh.copy(circle / "circle_0002.jpg", circle / "circle_0002 (copy).jpg")
    tiny = dest / "star"
    tiny.mkdir()
    sh.copy(dest / "triangle" / "triangle_0000.jpg", tiny / "star_0000.jpg")
    (dest / "__MACOSX").mkdir()
    (dest / "__MACOSX" / "._circle_0000.jpg").write_bytes(b"\0\5")
    return dest


def prepare_workspace(root: Path) -> dict[str, str]:
    """The demo dataset, a messy dataset, a finished from-scratch run and a probe run."""
    from finetune_core.config import RunConfig
    from finetune_core.data import create_demo_dataset
    from finetune_core.jobs.manager import JobManager
    from finetune_core.jobs.postrun import DEFAULT_HOOKS
    from finetune_core.presets import demo_config
    from finetune_core.store import Workspace

    ws = Workspace(root)
    dataset = create_demo_dataset(ws, creator="alice")
    from finetune_core.data import ingest

    with tempfile.TemporaryDirectory() as tmp:
        messy = ingest(ws, messy_folder(Path(tmp) / "photos"), name="messy photos", creator="bob")
    manager = JobManager(ws, post_run=list(DEFAULT_HOOKS))
    try:
        main = manager.submit(
            demo_config(dataset.id, pretrained_available=False).replace(epochs=10),
            creator="alice",
        )
        probe = manager.submit(
            RunConfig(
                dataset=dataset.id,
                name="probe, random weights",
                model="resnet18",
                weights="none",
                strategy="probe",
                epochs=4,
                image_size=64,
            ),
            creator="bob",
        )
        for run_id in (main, probe):
            status = manager.wait(run_id, timeout=900)
            print(f"run {run_id}: {status}", flush=True)
    finally:
        manager.shutdown()
    return {
        "dataset": dataset.id,
        "messy": messy.dataset.id,
        "run": main,
        "probe": probe,
        "images": str(dataset.images_dir),
    }


def start_app(workspace: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FINETUNE_WORKSPACE": str(workspace)}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log = open(workspace / "streamlit.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("streamlit did not start within 60 s")


def settle(page, timeout: float = 60.0) -> None:
    """Wait until the script run finished and the charts drew."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    time.sleep(1.0)
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidget"]').count()
        if not running:
            break
        time.sleep(0.3)
    time.sleep(1.5)  # plotly and images render after the run ends


def shoot(page, out: Path, name: str) -> None:
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    time.sleep(0.3)
    page.screenshot(path=str(out / f"{name}.png"))
    height = page.evaluate(
        """() => {
            const main = document.querySelector('[data-testid="stMain"]');
            const inner = document.querySelector('[data-testid="stMainBlockContainer"]');
            return Math.max(main ? main.scrollHeight : 0, inner ? inner.scrollHeight + 120 : 0,
                            document.body.scrollHeight);
        }"""
    )
    page.set_viewport_size({"width": WIDTH, "height": max(HEIGHT, min(int(height), 12000))})
    time.sleep(1.0)
    page.screenshot(path=str(out / f"{name}-full.png"))
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    print(f"saved {name}", flush=True)


def drive(base: str, ids: dict[str, str], out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        run, dataset = ids["run"], ids["dataset"]
        visits = [
            ("01-home", "/"),
            ("02-data", f"/data?dataset={dataset}"),
            ("02-data-health", f"/data?dataset={ids['messy']}"),
            ("03-setup", f"/setup?dataset={dataset}"),
            ("04-training-finished", f"/training?run={run}"),
            ("05-evaluation", f"/evaluation?run={run}"),
            ("07-predict", f"/predict?run={run}"),
            ("08-runs", "/runs"),
        ]
        for name, path in visits:
            page.goto(base + path)
            settle(page)
            shoot(page, out, name)

        # Evaluation: open the most confused pair (a confusion-matrix cell).
        page.goto(f"{base}/evaluation?run={run}")
        settle(page)
        # Click a cell of the confusion matrix (the transparent scatter point on it).
        points = page.locator('[data-testid="stPlotlyChart"] .scatterlayer .point')
        if points.count() >= 2:
            points.nth(1).click(force=True)
            settle(page)
        clicked = page.get_by_text("predicted", exact=False).filter(has_text="True ").count()
        print(f"confusion-matrix click opened a cell: {bool(clicked)}", flush=True)
        if not clicked:
            pair = page.get_by_role("button", name="→").first
            if pair.count():
                pair.click()
                settle(page)
        shoot(page, out, "06-evaluation-cell")
        for tab in ("Per class", "Top losses", "ROC & PR", "Calibration", "Training"):
            page.get_by_role("tab", name=tab).click()
            time.sleep(1.5)
            shoot(
                page, out, f"06-evaluation-tab-{tab.lower().replace(' ', '-').replace('&', 'and')}"
            )
        page.get_by_role("tab", name="Compare runs").click()
        time.sleep(1.0)
        combo = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Compare with")
        if combo.count():
            combo.first.locator("input").first.click()
            time.sleep(0.5)
            page.keyboard.press("Enter")
            page.keyboard.press("Escape")
            settle(page)
            page.get_by_role("tab", name="Compare runs").click()
            time.sleep(1.5)
        shoot(page, out, "06-evaluation-tab-compare")

        # Setup: random weights (nothing to download), then the learning-rate finder.
        page.goto(f"{base}/setup?dataset={dataset}")
        settle(page)
        page.get_by_text("None (random initialisation)").click()
        settle(page)
        page.get_by_role("button", name="Find a learning rate").click()
        settle(page, timeout=180)
        page.get_by_text("Learning-rate finder", exact=True).first.scroll_into_view_if_needed()
        shoot(page, out, "03-setup-lr-finder")

        # Data: the files behind a health warning, with thumbnails.
        page.goto(f"{base}/data?dataset={ids['messy']}")
        settle(page)
        expander = page.get_by_text("Show the 4 file(s)")
        if expander.count():
            expander.first.click()
            time.sleep(1.5)
        shoot(page, out, "02-data-health-files")

        # Predict: three images with their activation maps, then a batch CSV.
        samples = sorted(Path(ids["images"]).rglob("*.jpg"))[::40][:3]
        page.goto(f"{base}/predict?run={run}")
        settle(page)
        page.locator('input[type="file"]').first.set_input_files([str(p) for p in samples])
        settle(page)
        page.get_by_text("Show activation maps").click()
        settle(page)
        shoot(page, out, "07-predict-images")

        # Evaluation: activation maps of the mistakes.
        page.goto(f"{base}/evaluation?run={run}")
        settle(page)
        page.get_by_role("tab", name="Activation maps").click()
        time.sleep(0.5)
        page.get_by_text("Compute the activation maps").click()
        settle(page)
        page.get_by_role("tab", name="Activation maps").click()
        time.sleep(1.5)
        shoot(page, out, "06-evaluation-tab-activation-maps")

        # Data: a folder upload from the browser (one sub-folder per class).
        from finetune_core.data import make_demo_folder

        with tempfile.TemporaryDirectory() as tmp:
            folder = make_demo_folder(Path(tmp) / "garden-shapes", classes=2, per_class=8)
            page.goto(f"{base}/data")
            settle(page)
            page.get_by_text("Add a dataset").first.click()
            page.get_by_role("tab", name="Folder").click()
            time.sleep(0.5)
            page.locator('input[type="file"][webkitdirectory]').set_input_files(str(folder))
            page.get_by_text("16 files selected").wait_for(timeout=60_000)
            page.get_by_role("button", name="Import folder").click()
            page.get_by_text("Imported 16 images in 2 classes").wait_for(timeout=120_000)
            settle(page)
            print("folder upload imported 16 images", flush=True)
            shoot(page, out, "02-data-folder-imported")

        # Evaluation: a verified export.
        page.goto(f"{base}/evaluation?run={run}")
        settle(page)
        page.get_by_role("button", name="Export and verify").click()
        settle(page, timeout=180)
        page.get_by_text("Export the model").first.scroll_into_view_if_needed()
        time.sleep(0.5)
        shoot(page, out, "06-evaluation-export")

        # Data page: the per-source import tabs.
        page.goto(f"{base}/data?dataset={dataset}")
        settle(page)
        page.get_by_text("Add a dataset").first.click()
        time.sleep(1.0)
        page.get_by_role("tab", name="Class by class").click()
        time.sleep(1.0)
        shoot(page, out, "02-data-import-classes")

        # A live run: the one-click demo from the Home page.
        page.goto(base + "/")
        settle(page)
        page.get_by_role("button", name="Train a quick demo model").click()
        page.wait_for_url("**/training**", timeout=60_000)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if page.get_by_text("Epoch 2 of").count():
                break
            time.sleep(0.5)
        time.sleep(1.0)
        shoot(page, out, "04-training-live")
        page.get_by_role("button", name="Stop", exact=True).click()
        page.get_by_text("It can resume from its last checkpoint").wait_for(timeout=120_000)
        settle(page)
        shoot(page, out, "04-training-stopped")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "screenshots"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument(
        "--workspace", help="reuse a workspace a previous --keep run prepared (skips training)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reuse = Path(args.workspace) if args.workspace else None
    workspace = reuse or Path(tempfile.mkdtemp(prefix="finetune-shots-"))
    proc = None
    try:
        if reuse is not None:
            ids = json.loads((reuse / "screenshot-ids.json").read_text())
        else:
            ids = prepare_workspace(workspace)
            (workspace / "screenshot-ids.json").write_text(json.dumps(ids))
        port = free_port()
        proc = start_app(workspace, port)
        drive(f"http://127.0.0.1:{port}", ids, out)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep or reuse is not None:
            print(f"workspace kept at {workspace}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
