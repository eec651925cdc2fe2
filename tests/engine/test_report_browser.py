"""The run report that `tunedet train` writes: offline HTML whose every image loads in a browser.

The browser check opens report.html in headless Chromium (`/usr/bin/chromium` or
`chromium` on PATH) and reads the DOM after load: an inline script of the
report sets `data-images-loaded="true"` on <body> when every <img> is complete
with a non-zero natural width. Skipped where Chromium is not installed.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tunedet.cli.main import main


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_command(browser: str, profile: Path, *extra: str) -> list[str]:
    return [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *extra,
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_demo) -> Path:
    run = tmp_path_factory.mktemp("run")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert (
            main(
                ["train", "retinanet/demo", *tiny_demo, "train.log_every=1", "--work-dir", str(run)]
            )
            == 0
        )
    assert f"report: {run / 'report.html'}" in out.getvalue()
    return run / "report.html"


def test_train_writes_report_with_metrics_per_class_and_local_images(report: Path):
    page = report.read_text()
    assert 'id="metrics"' in page and 'id="per-class"' in page
    for name in ("AP50", "circle", "square", "triangle"):
        assert name in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert {
        "eval/pr_curves.png",
        "eval/confusion_matrix.png",
        "curves.png",
        "predictions.png",
    } <= set(sources)
    for src in sources:
        assert (report.parent / src).stat().st_size > 1000, src
    assert "http://" not in page and "https://" not in page  # opens offline
    assert (report.parent / "eval" / "metrics.json").is_file()


def test_report_loads_all_images_in_headless_chromium(report: Path, tmp_path: Path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium) - browser check skipped")
    url = report.resolve().as_uri()
    dom = subprocess.run(
        chromium_command(
            browser, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", url
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:2000]
    assert 'data-images-loaded="true"' in body.group(0), body.group(0)
    count = re.search(r'data-image-count="(\d+)"', body.group(0))
    assert count is not None and int(count.group(1)) >= 4
    assert 'id="metrics"' in dom.stdout

    screenshot = tmp_path / "report.png"
    shot = subprocess.run(
        chromium_command(
            browser,
            tmp_path / "profile2",
            f"--screenshot={screenshot}",
            "--window-size=1200,2000",
            "--virtual-time-budget=5000",
            url,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000
