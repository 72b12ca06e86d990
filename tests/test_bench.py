"""The benchmark's own parts: image generator, process-tree memory sampler, acceptance and report.

No timing is asserted anywhere; the benchmark itself runs in CI in its ``--quick`` smoke mode.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading

import pytest

report = pytest.importorskip("bench.report", reason="bench/ is not in this checkout (it is not in the wheel)")
from bench import data, procs  # noqa: E402


def _digest(folder):
    return {p.split("/n4/")[-1]: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in data.image_files(folder)}


def test_generated_images_are_deterministic_and_in_class_folders(tmp_path):
    a = data.generated_images(tmp_path / "a", 4)
    b = data.generated_images(tmp_path / "b", 4)
    assert _digest(a) == _digest(b)
    assert sorted({p.split("/")[-2] for p in data.image_files(a)}) == sorted(data.CLASSES)
    assert not list(a.glob(".*")), "no marker file inside the image tree (the loader would reject it)"


def test_tree_sampler_counts_grandchildren():
    # A shell whose child Python holds ~300 MB: the peak must include the grandchild.
    code = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(2)"
    proc = subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c \"{code}\"; true"])
    stop, tree = threading.Event(), procs.TreeSample()
    sampler = threading.Thread(target=procs.sample_tree, args=(proc.pid, stop, 0.05, tree))
    sampler.start()
    proc.wait()
    stop.set()
    sampler.join()
    assert tree.peak_processes >= 2
    assert tree.peak_bytes >= 300 * 2**20
    assert tree.peak_by_kind.get("python", 0) >= 300 * 2**20


def _results(warm_ips=95.0, grid_s=5.0, big_rss=5 * 2**30):
    run = {"model": "efficientnet_lite0", "featurize_s": 10.0, "single_fit_s": [3.0, 2.0], "grid_s": grid_s,
           "grid_points": 9, "folds": 3, "images": 200, "test_accuracy": 1.0,
           "peak_rss": {"bytes": 4 * 2**30, "by_kind": {"jvm": 2**30, "python_worker": 2**30}}}
    return {
        "machine": {"date": "d", "cpu": "cpu", "cpu_count": 2, "memory_gib": 8, "versions": {"pyspark": "4"}},
        "command": "python -m bench featurize",
        "settings": {"batch_size": 32, "cores": 2, "repeats": 2, "quick": False,
                     "grid": {"reg_param": [1, 2, 3], "elastic_net_param": [0, 1, 0.5], "max_iter": [100]}},
        "throughput": [{"model": "efficientnet_lite0", "dataset": "generated", "input_size": 224,
                        "weights": "offline", "keras": {"images": 320, "predict_ips": 100.0, "files_ips": 80.0},
                        "spark": {"cold_ips": 30.0, "warm_ips": warm_ips, "decoded_warm_ips": 70.0}}],
        "pipeline": [{**run, "size": "N"},
                     {**run, "size": "10N", "peak_rss": {"bytes": big_rss, "by_kind": {}}}],
    }


def test_acceptance_checks_compute_the_issue_ratios():
    results = _results()
    checks = {(c["check"], c.get("model")): c for c in report.acceptance(results)}
    speed = checks[("Spark featurize stage (warm) / Keras predict", "efficientnet_lite0")]
    assert speed["value"] == pytest.approx(0.95) and speed["ok"]
    grid = checks[("9-point grid / one fit, featurize once (N)", "efficientnet_lite0")]
    assert grid["value"] == pytest.approx((10 + 5) / (10 + 2)) and grid["ok"]  # the faster single fit
    growth = checks[("peak RSS 10N / N", "efficientnet_lite0")]
    assert growth["value"] == pytest.approx(1.25) and not growth["ok"]


def test_failing_figures_fail_their_checks():
    checks = report.acceptance(_results(warm_ips=80.0, grid_s=30.0, big_rss=7 * 2**30))
    failed = {c["check"] for c in checks if not c["ok"]}
    assert "Spark featurize stage (warm) / Keras predict" in failed
    assert "9-point grid / one fit, featurize once (10N)" in failed
    assert "peak RSS at 10N (GiB)" in failed


def test_markdown_table_and_readme_block(tmp_path):
    results = _results()
    results["acceptance"] = report.acceptance(results)
    table = report.markdown(results)
    assert "| efficientnet_lite0 | 224 | offline | 320 generated | 100.0 | 80.0 | 30.0 | 95.0 | 70.0 | 0.95 | 0.70 |" in table
    assert "`python -m bench featurize`" in table and "**fail**" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nOLD-TABLE\n{report.README_END}\nrest\n")
    report.update_readme(readme, table)
    text = readme.read_text()
    assert "OLD-TABLE" not in text and table in text and text.startswith("intro\n") and text.endswith("rest\n")
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        report.update_readme(readme, table)
