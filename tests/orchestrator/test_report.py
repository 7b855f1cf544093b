import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchestrator.report import PLOTS_DIR, compare_runs, write_compare, write_report
from orchestrator.rundir import RunDirError
from tests.orchestrator.fake_run import EVIL, make_run

PLOTS = ["accuracy.png", "judge_scores.png", "win_rate.png", "trust.png", "pairs.png", "score_hist.png",
         "dpo_loss.png", "stage_seconds.png"]


def test_report_writes_every_plot_and_escapes_run_text(tmp_path):
    root = make_run(tmp_path / "run")
    page = Path(write_report(root)).read_text()
    for name in PLOTS:
        data = (root / PLOTS_DIR / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
        assert f'src="{PLOTS_DIR}/{name}"' in page
    assert EVIL not in page and "&lt;script&gt;alert(" in page  # run text is data, never markup
    # Self-contained: nothing is fetched from the network.
    assert "http://" not in page.replace("http://example.com/x.png", "") and "https://" not in page
    assert "judge_uncertain" in page and "Sample pairs (iteration 2)" in page


def test_report_of_a_run_without_iterations_and_of_a_non_run(tmp_path):
    root = make_run(tmp_path / "run", iterations=0 + 1)
    (root / "iter_001" / "metrics.json").unlink()  # as if killed before iteration 1 finished
    page = Path(write_report(root)).read_text()
    assert "0 iteration(s) committed" in page and all((root / PLOTS_DIR / n).is_file() for n in PLOTS)
    with pytest.raises(RunDirError, match="no state.json"):
        write_report(tmp_path)


def test_compare_puts_runs_side_by_side(tmp_path):
    a = make_run(tmp_path / "srlm", accuracy=(0.2, 0.3, 0.5))
    b = make_run(tmp_path / "cream", accuracy=(0.2, 0.4, 0.6))
    header, rows, data = compare_runs([a, b])
    assert header == ["metric", "iter", "srlm", "cream"]
    assert ["accuracy", "2", "0.500", "0.600"] in rows
    assert ["mean consistency", "2", "0.50", "0.50"] in rows
    assert not any(r[0] == "mean consistency" and r[1] == "1" for r in rows)  # undefined everywhere: no row
    text = write_compare([a, b], tmp_path / "cmp.md")
    assert (tmp_path / "cmp.md").read_text().strip() == text
    assert json.loads((tmp_path / "cmp.json").read_text())["metrics"]["eval_accuracy"]["1"] == {"srlm": 0.3, "cream": 0.4}
    assert data["runs"]["srlm"] == str(a)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(page) -> str:
    """The DOM of ``page`` after load, from headless Chromium with networking off (loopback-only machine)."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package chromium)")
def test_report_renders_in_headless_chromium_with_every_plot(tmp_path):
    root = make_run(tmp_path / "run")
    page = Path(write_report(root))
    dom = render(page)
    assert f'data-plots-total="{len(PLOTS)}"' in dom and f'data-plots-loaded="{len(PLOTS)}"' in dom
    assert '<p class="missing">' not in dom
    # The check is real: a deleted plot is reported as missing.
    (root / PLOTS_DIR / "trust.png").unlink()
    dom = render(page)
    assert f'data-plots-loaded="{len(PLOTS) - 1}"' in dom and '<p class="missing">plot missing: plots/trust.png' in dom
