import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchestrator.reporting.report import PLOTS_DIR, compare_runs, write_compare, write_report
from orchestrator.run.rundir import RunDirError
from tests.orchestrator.fake_run import EVIL, make_run

PLOTS = ["accuracy.svg", "accuracy_vs_m0.svg", "judge_scores.svg", "judge_calibration.svg", "win_rate.svg", "trust.svg",
         "pairs.svg", "score_hist.svg", "dpo_loss.svg", "stage_seconds.svg"]


def test_report_writes_every_plot_and_escapes_run_text(tmp_path):
    root = make_run(tmp_path / "run")
    page = Path(write_report(root)).read_text()
    for name in PLOTS:
        svg = (root / PLOTS_DIR / name).read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg, name
        assert f'data-name="{PLOTS_DIR}/{name}"' in page
    assert EVIL not in page and "&lt;script&gt;alert(" in page  # run text is data, never markup
    # Self-contained: nothing is fetched from the network (SVG namespace names are not fetched).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.replace(html.escape(EVIL), ""))
    assert "judge_uncertain" in page and "Sample pairs (iteration 2)" in page
    assert "Label precision against chance" in page and "all filters (kept vs dropped)" in page
    # Every rate and mean carries its interval and n; a metric is declared once, so the labels are the declared ones.
    assert "accuracy (held-out)" in page and "0.300 [0.108, 0.603] 3/10" in page
    # The accuracy plot has an error bar per model; the 2-item kept precision and 1-item judge means are hollow.
    acc = (root / PLOTS_DIR / "accuracy.svg").read_text()
    assert all(f'id="ci-eval_accuracy-{t}"' in acc for t in (0, 1, 2))
    judge = (root / PLOTS_DIR / "judge_scores.svg").read_text()
    assert 'id="small-n-eval_fixed_judge-1"' in judge and 'id="ci-eval_fixed_judge-1"' in judge
    # Kept-label precision over pairs from fewer than 5 prompts is n/a: no point, no interval.
    trust = (root / PLOTS_DIR / "trust.svg").read_text()
    assert "kept_label_precision-1" not in trust and "n/a" in trust


def test_points_resting_on_few_items_are_hollow_labelled_and_not_joined(tmp_path):
    root = make_run(tmp_path / "run", iterations=3, accuracy=(0.2, 0.3, 0.4, 0.5))
    write_report(root)
    judge = (root / PLOTS_DIR / "judge_scores.svg").read_text()
    # Judge means over 3 responses per iteration: each point hollow with its n, and no line joins them.
    assert all(f'id="small-n-eval_fixed_judge-{t}"' in judge for t in (1, 2, 3))
    assert judge.count("n=3") >= 3
    # Accuracy rests on 10 prompts: filled points joined by lines.
    acc = (root / PLOTS_DIR / "accuracy.svg").read_text()
    assert "small-n-eval_accuracy" not in acc


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
    assert ["accuracy (held-out)", "2", "0.500 [0.237, 0.763] 5/10", "0.600 [0.313, 0.832] 6/10"] in rows
    assert ["mean consistency C", "2", "0.50 [0.25, 0.75] n=2", "0.50 [0.25, 0.75] n=2"] in rows
    assert ["mean consistency C", "1", "n/a", "n/a"] in rows  # undefined at iteration 1: said, not a number
    # From the evaluation tables: the paired difference from the first run's accuracy, over the same prompts.
    paired = [r for r in rows if r[0] == "accuracy - srlm's (paired)"]
    assert [r[1] for r in paired] == ["0", "1", "2"] and all(r[2] == "-" for r in paired)
    assert paired[2][3].startswith("+0.100 [") and paired[0][3].startswith("+0.000")
    assert any(r[0] == "answer distinct-2 (held-out)" and r[1] == "2" for r in rows)
    text = write_compare([a, b], tmp_path / "cmp.md")
    md = (tmp_path / "cmp.md").read_text()
    assert md.startswith(text) and "![held-out accuracy](cmp-accuracy.svg)" in md
    for plot in ("cmp-accuracy.svg", "cmp-accuracy-paired.svg"):
        assert "<svg" in (tmp_path / plot).read_text()
    saved = json.loads((tmp_path / "cmp.json").read_text())["metrics"]["eval_accuracy"]["1"]
    assert saved["srlm"]["value"] == 0.3 and saved["cream"]["n"] == 10 and saved["cream"]["ci95"]
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
def test_report_renders_in_headless_chromium_with_every_plot_and_its_error_bars(tmp_path):
    root = make_run(tmp_path / "run")
    page = Path(write_report(root))
    dom = render(page)
    assert f'data-plots-total="{len(PLOTS)}"' in dom and f'data-plots-loaded="{len(PLOTS)}"' in dom
    assert '<p class="missing">' not in dom
    # Error bars drawn on screen: accuracy x3, its M0 difference x2, judge scores, AUROC, win/tie/loss, trust.
    bars = int(re.search(r'data-errorbars="(\d+)"', dom).group(1))
    assert bars >= 3 + 2 + 2 * 3
    assert int(re.search(r'data-small-n="(\d+)"', dom).group(1)) >= 2
    # The check is real: a plot that does not render is reported as missing.
    broken = page.read_text().replace('<figure class="plot" data-name="plots/trust.svg"><svg', '<figure class="plot" '
                                      'data-name="plots/trust.svg"><div', 1)
    page.write_text(broken)
    dom = render(page)
    assert f'data-plots-loaded="{len(PLOTS) - 1}"' in dom and '<p class="missing">plot missing: plots/trust.svg' in dom
