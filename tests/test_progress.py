"""Progress on stderr: tqdm with rate and ETA; in a log (not a TTY) whole lines ending with the final count."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from conftest import VISION_PLUGIN, make_flat_folder
from zoomshot.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]


def test_a_log_gets_whole_lines_and_the_final_count():
    log = io.StringIO()  # not a TTY
    bar = progress_bar(246, "extract", stream=log, log_interval=3600)
    for n in (64, 64, 64, 54):
        bar.update(n)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("extract") and "0/246" in lines[0]
    assert "246/246" in lines[-1] and "img/s" in lines[-1]


def test_quiet_writes_nothing():
    log = io.StringIO()
    bar = progress_bar(10, "extract", stream=log, enabled=False)
    bar.update(10)
    bar.close()
    assert log.getvalue() == ""


def test_a_non_tty_extract_log_ends_with_the_final_count(tmp_path):
    folder = make_flat_folder(tmp_path / "imgs", n=7)
    log = tmp_path / "extract.log"
    with open(log, "w") as err:  # stderr is a file, as under a scheduler
        r = subprocess.run([sys.executable, "-m", "zoomshot", "extract", "--images", str(folder), "--encoder",
                            VISION_PLUGIN, "--out", str(tmp_path / "c.h5"), "--workers", "0", "--batch-size", "3",
                            "--device", "cpu"], stderr=err, stdout=subprocess.PIPE, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO / "tests")}, timeout=300)
    text = log.read_text()
    assert r.returncode == 0, text
    bars = [ln for ln in text.splitlines() if ln.startswith("extract")]
    assert bars and "7/7" in bars[-1] and "img/s" in bars[-1], text
    assert "\r" not in text
