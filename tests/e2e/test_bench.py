"""The benchmark's own parts: image generator, process-tree memory sampler, acceptance and report.

No timing is asserted anywhere; the benchmark itself runs in CI in its ``--quick`` smoke mode.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

report = pytest.importorskip("bench.report", reason="bench/ is not in this checkout (it is not in the wheel)")
from bench import data, procs, stream  # noqa: E402


def _digest(folder):
    return {p.split("-n4/")[-1]: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in data.image_files(folder)}


def test_generated_images_are_deterministic_and_in_class_folders(tmp_path):
    a = data.generated_images(tmp_path / "a", 4)
    b = data.generated_images(tmp_path / "b", 4)
    assert _digest(a) == _digest(b) and len(_digest(a)) == 4
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


def _limits(tf_a=100.0, ov_a=150.0, ov_b=120.0, diff=2e-5, bf16_a=240.0, cosine=0.9995):
    return {"images": 320, "decode_ms": 2.0, "engines": {
        "tensorflow/fp32": {"engine": "tensorflow", "precision": "fp32", "a_ips": tf_a, "b_ips": 90.0,
                            "max_abs_diff": 0.0, "min_cosine": 1.0},
        "openvino/fp32": {"engine": "openvino", "precision": "fp32", "a_ips": ov_a, "b_ips": ov_b,
                          "max_abs_diff": diff, "min_cosine": 1.0},
        "openvino/bf16": {"engine": "openvino", "precision": "bf16", "a_ips": bf16_a, "max_abs_diff": 0.3,
                          "min_cosine": cosine}}}


def _results(warm_ips=125.0, tf_warm=80.0, grid_s=5.0, big_rss=5 * 2**30, amx=False, **limits):
    run = {"model": "efficientnet_lite0", "load_s": 3.0, "featurize_s": 10.0, "single_fit_s": [3.0, 2.0],
           "grid_s": grid_s, "grid_points": 9, "folds": 3, "images": 200, "test_accuracy": 1.0, "engine": "openvino",
           "peak_rss": {"bytes": 4 * 2**30, "by_kind": {"jvm": 2**30, "python_worker": 2**30}}}
    return {
        "machine": {"date": "d", "cpu": "cpu", "cpu_count": 2, "memory_gib": 8, "versions": {"pyspark": "4"},
                    "amx_bf16": amx, "avx512_bf16": True},
        "command": "python -m bench featurize",
        "settings": {"batch_size": 32, "cores": 2, "repeats": 2, "quick": False,
                     "grid": {"reg_param": [1, 2, 3], "elastic_net_param": [0, 1, 0.5], "max_iter": [100]}},
        "throughput": [{"model": "efficientnet_lite0", "dataset": "generated", "input_size": 224,
                        "weights": "offline", "limits": _limits(**limits),
                        "spark_tf": {"images": 320, "engine": "tensorflow", "cold_ips": 30.0, "warm_ips": tf_warm},
                        "spark_auto": {"images": 320, "engine": "openvino", "cold_ips": 40.0, "warm_ips": warm_ips,
                                       "e2e_ips": 100.0, "e2e_featurize_ips": 120.0, "decoded_warm_ips": 70.0}}],
        "pipeline": [{**run, "size": "N"},
                     {**run, "size": "10N", "peak_rss": {"bytes": big_rss, "by_kind": {}}}],
    }


def test_acceptance_checks_compute_the_issue_ratios():
    checks = {c["check"]: c for c in report.acceptance(_results())}
    vs_b = checks["Spark featurize (openvino, warm) / limit (b) (openvino/fp32)"]
    assert vs_b["value"] == pytest.approx(125 / 120) and vs_b["ok"]
    vs_a = checks["Spark featurize (openvino, warm) / limit (a) (openvino/fp32)"]
    assert vs_a["value"] == pytest.approx(125 / 150) and vs_a["ok"]  # best fp32 engine, not bf16's 240
    vs_tf = checks["Spark featurize (openvino) / Spark featurize (tensorflow), warm"]
    assert vs_tf["value"] == pytest.approx(125 / 80) and vs_tf["ok"]
    e2e = checks["end to end (load + featurize) / featurize only"]
    assert e2e["value"] == pytest.approx(100 / 120) and e2e["ok"]
    assert checks["openvino/fp32 features vs TensorFlow (max abs diff)"]["ok"]
    bf16 = checks["bf16 / fp32 (openvino, limit a)"]
    assert bf16["value"] == pytest.approx(240 / 150) and bf16["ok"] and "no AMX" in bf16["limit"]
    grid = checks["9-point grid / one fit, featurize once (N)"]
    assert grid["value"] == pytest.approx((10 + 5) / (10 + 2)) and grid["ok"]  # the faster single fit
    growth = checks["peak RSS 10N / N"]
    assert growth["value"] == pytest.approx(1.25) and not growth["ok"]


def test_failing_figures_fail_their_checks():
    checks = report.acceptance(_results(warm_ips=100.0, tf_warm=90.0, grid_s=30.0, big_rss=7 * 2**30, amx=True,
                                        diff=3e-4, cosine=0.99))
    failed = {c["check"] for c in checks if not c["ok"]}
    assert failed >= {"Spark featurize (openvino, warm) / limit (a) (openvino/fp32)",
                      "Spark featurize (openvino) / Spark featurize (tensorflow), warm",
                      "openvino/fp32 features vs TensorFlow (max abs diff)", "bf16 features vs fp32 (min cosine)",
                      "bf16 / fp32 (openvino, limit a)",  # 1.6 < 1.8 where the CPU has AMX
                      "9-point grid / one fit, featurize once (10N)", "peak RSS at 10N (GiB)"}


def test_scale_acceptance():
    def run(n, ips, rss):
        return {"model": "efficientnet_lite0", "n": n, "images": n, "throughput_ips": ips,
                "peak_rss": {"bytes": rss, "by_kind": {}}}

    ok = report.scale_acceptance({"runs": [run(2000, 100.0, 4 * 2**30), run(50000, 95.0, 4.4 * 2**30)]})
    assert all(c["ok"] for c in ok) and ok[0]["value"] == pytest.approx(0.95)
    bad = report.scale_acceptance({"runs": [run(2000, 100.0, 4 * 2**30), run(50000, 85.0, 6.5 * 2**30)]})
    assert [c["ok"] for c in bad] == [False, False, False]


def test_scale_table_shows_each_stage_and_its_peak():
    from bench.procs import TreeSample

    tree = TreeSample(series=[(10.0, 1 * 2**30), (11.0, 3 * 2**30), (12.0, 2 * 2**30), (13.0, 5 * 2**30)])
    assert tree.peak_between(10.0, 12.5) == 3 * 2**30 and tree.peak_between(12.5, 14.0) == 5 * 2**30
    assert tree.peak_between(20.0, 21.0) == 0

    def run(n):
        by_phase = {"load": 1.0 * 2**30, "featurize": 3.5 * 2**30, "train": 2.0 * 2**30, "evaluate": 1.5 * 2**30}
        return {"model": "efficientnet_lite0", "n": n, "images": n, "engine": "openvino", "load_s": 10.0,
                "featurize_s": 40.0, "throughput_ips": n / 50.0, "featurize_ips": n / 40.0, "train_s": 20.0,
                "tuning_engine": "spark" if n > 2000 else "local", "evaluate_s": 5.0, "test_accuracy": 1.0,
                "peak_rss": {"bytes": 3.5 * 2**30, "by_kind": {"jvm": 1.5 * 2**30}, "by_phase": by_phase}}

    results = {"machine": {"cpu": "x", "cpu_count": 2, "memory_gib": 23.5, "date": "today", "versions": {}},
               "command": "python -m bench", "settings": {"batch_size": 32, "cores": 2, "quick": False},
               "runs": [run(2000), run(50000)]}
    results["acceptance"] = report.scale_acceptance(results)
    table = report.scale_markdown(results)
    assert "| efficientnet_lite0 | 50,000 | openvino | 10.0 | 40.0 | 1000.0 | 1250.0 | 20.0 (spark) | 5.0 |" in table
    assert "| 1.00 / 3.50 / 2.00 / 1.50 | 1.000 |" in table


def test_markdown_table_and_performance_page_block(tmp_path):
    results = _results()
    results["acceptance"] = report.acceptance(results)
    table = report.markdown(results)
    assert "| efficientnet_lite0 | 224 | offline | 320 generated | 2.00 | openvino/fp32 | 150.0 | 120.0 |" in table
    assert ("| efficientnet_lite0 | 320 generated | 30.0 | 80.0 | 40.0 | 125.0 (openvino) | 1.56 | 0.83 | 1.04 "
            "| 100.0 | 0.83 | 70.0 | - | - | - |") in table
    assert "`python -m bench featurize`" in table and "**fail**" in table
    page = tmp_path / "performance.md"
    start, end = report.FEATURIZE_MARKERS
    page.write_text(f"intro\n{start}\nOLD-TABLE\n{end}\nrest\n")
    report.update_page(page, table)
    text = page.read_text()
    assert "OLD-TABLE" not in text and table in text and text.startswith("intro\n") and text.endswith("rest\n")
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        report.update_page(page, table)


def test_performance_page_is_the_only_page_with_the_benchmark_markers():
    # `--readme` (make bench, bench-scale, bench-stream) rewrites docs/performance.md between these markers.
    root = Path(__file__).resolve().parents[2]
    markers = [report.FEATURIZE_MARKERS, report.SCALE_MARKERS, stream.MARKERS]
    page = (root / report.PAGE).read_text()
    for start, end in markers:
        assert page.count(start) == 1 and page.count(end) == 1 and page.index(start) < page.index(end), start
    others = [root / "README.md", root / "bench" / "README.md", *(root / "docs").glob("*.md")]
    for other in others:
        if other.resolve() != (root / report.PAGE).resolve() and other.exists():
            text = other.read_text()
            assert not any(m in text for pair in markers for m in pair), other


def test_generated_images_are_the_same_from_a_process_pool(tmp_path):
    serial = data.generated_images(tmp_path / "serial", 60, workers=1)
    pooled = data.generated_images(tmp_path / "pooled", 60, workers=2)
    digest = lambda folder: {p.split("-n60/")[-1]: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
                             for p in data.image_files(folder)}
    assert digest(serial) == digest(pooled) and len(digest(serial)) == 60
