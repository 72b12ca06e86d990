"""Benchmark results -> acceptance checks, a Markdown table, and README's copy of it."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

GIB = 2**30
README_START, README_END = "<!-- bench:featurize:start -->", "<!-- bench:featurize:end -->"
SPEED_MODELS = ("efficientnet_lite0", "InceptionV3")  # the acceptance's two models
LIMITS = {"speed": 0.9, "grid": 1.5, "rss_growth": 1.2, "rss_gib": 6.0}


def machine(cores: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    versions = {}
    for name in ("pyspark", "tensorflow", "keras", "numpy", "pillow"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed: left out
            pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cores_used": cores, "memory_gib": round(mem / GIB, 1),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def command(opts, defaults) -> str:
    """The command line that reproduces ``opts``: options that differ from ``defaults`` only."""
    args = ["python", "-m", "bench", "featurize"]
    for key in ("models", "n", "speed_images", "cores", "batch_size", "repeats"):
        value = getattr(opts, key, None)
        if value is not None and value != getattr(defaults, key):
            args += [f"--{key.replace('_', '-')}", str(value)]
    args += ["--quick"] if opts.quick else []
    return shlex.join(args)


def grid_ratio(run: dict) -> float:
    """(featurize once + grid) / (featurize once + one fit): the faster single fit, so the larger ratio."""
    single = min(run["single_fit_s"])
    return (run["featurize_s"] + run["grid_s"]) / (run["featurize_s"] + single)


def acceptance(results: dict) -> list[dict]:
    checks = []
    for row in results["throughput"]:
        if row["model"] in SPEED_MODELS and row["dataset"] == "generated":
            limit = row["keras"]["predict_ips"]
            checks.append({"check": "Spark featurize stage (warm) / Keras predict", "model": row["model"],
                           "value": row["spark"]["warm_ips"] / limit, "limit": f">= {LIMITS['speed']}",
                           "ok": row["spark"]["warm_ips"] >= LIMITS["speed"] * limit})
    by_model: dict[str, dict] = {}
    for run in results["pipeline"]:
        by_model.setdefault(run["model"], {})[run["size"]] = run
        ratio = grid_ratio(run)
        checks.append({"check": f"{run['grid_points']}-point grid / one fit, featurize once ({run['size']})",
                       "model": run["model"], "value": ratio, "limit": f"<= {LIMITS['grid']}",
                       "ok": run["grid_points"] >= 9 and ratio <= LIMITS["grid"]})
    for model, runs in by_model.items():
        if {"N", "10N"} <= set(runs):
            small, big = runs["N"]["peak_rss"]["bytes"], runs["10N"]["peak_rss"]["bytes"]
            checks.append({"check": "peak RSS 10N / N", "model": model, "value": big / small,
                           "limit": f"<= {LIMITS['rss_growth']}", "ok": big <= LIMITS["rss_growth"] * small})
            checks.append({"check": "peak RSS at 10N (GiB)", "model": model, "value": big / GIB,
                           "limit": f"< {LIMITS['rss_gib']}", "ok": big < LIMITS["rss_gib"] * GIB})
    return checks


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        f"Measured {m['date']} with `{results['command']}` on {m['cpu']} ({m['cpu_count']} CPUs, "
        f"{m['memory_gib']} GiB), local[{s['cores']}], batch {s['batch_size']}, best of {s['repeats']} warm runs; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "."
        + (" **Quick smoke run: these figures mean nothing.**" if s["quick"] else ""),
        "",
        "Throughput (images/s). *Keras predict*: `model.predict` on pre-decoded, preprocessed batches (the limit); "
        "*Keras files*: the same images read, decoded, resized and predicted in one process; *Spark cold*: the "
        "featurize stage with fresh Python workers; *Spark warm*: the stage again on warm workers (JPEG bytes "
        "from Parquet in, features to Parquet out), the acceptance figure; *Spark structs*: the featurizer fed the "
        "same images as decoded Spark image structs (sparkdl's `readImages`) from Parquet, ten times the bytes "
        "through the JVM.",
        "",
        "| model | input | weights | images | Keras predict | Keras files | Spark cold | Spark warm | Spark structs "
        "| warm / predict | structs / predict | warm / Keras files |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["throughput"]:
        k, sp = row["keras"], row["spark"]
        lines.append(
            f"| {row['model']} | {row['input_size']} | {row['weights']} | {k['images']} {row['dataset']} "
            f"| {_f(k['predict_ips'])} | {_f(k['files_ips'])} | {_f(sp['cold_ips'])} | {_f(sp['warm_ips'])} "
            f"| {_f(sp['decoded_warm_ips'])} | {_f(sp['warm_ips'] / k['predict_ips'], 2)} "
            f"| {_f(sp['decoded_warm_ips'] / k['predict_ips'], 2)} | {_f(sp['warm_ips'] / k['files_ips'], 2)} |")
    lines += [
        "",
        f"Pipeline on generated images (4 classes): load -> featurize once -> one LogisticRegression fit, and a "
        f"{len(results['settings']['grid']['reg_param']) * len(results['settings']['grid']['elastic_net_param']) * len(results['settings']['grid']['max_iter'])}"
        "-point grid (regParam x elasticNetParam x maxIter) with k-fold CV on the same persisted features. "
        "Peak RSS: the whole process tree (driver Python, JVM, Python workers), sampled every 0.1 s.",
        "",
        "| model | images | peak RSS GiB | of which JVM / Python workers | featurize s | one fit s | grid s "
        "| grid / one fit (featurize once) | test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["pipeline"]:
        kinds = run["peak_rss"]["by_kind"]
        lines.append(
            f"| {run['model']} | {run['images']} ({run['size']}) | {_f(run['peak_rss']['bytes'] / GIB, 2)} "
            f"| {_f(kinds.get('jvm', 0) / GIB, 2)} / {_f(kinds.get('python_worker', 0) / GIB, 2)} "
            f"| {_f(run['featurize_s'])} | {_f(min(run['single_fit_s']))} | {_f(run['grid_s'])} "
            f"({run['grid_points']} x {run['folds']} folds) | {_f(grid_ratio(run), 2)} | {_f(run['test_accuracy'], 3)} |")
    lines += ["", "| acceptance | model | measured | limit | |", "|---|---|---|---|---|"]
    for c in results["acceptance"]:
        lines.append(f"| {c['check']} | {c['model']} | {_f(c['value'], 2)} | {c['limit']} | "
                     f"{'pass' if c['ok'] else '**fail**'} |")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the benchmark markers in README.md (which must hold them)."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: markers {README_START} ... {README_END} not found")
    readme.write_text(pattern.sub(lambda _: f"{README_START}\n{table}{README_END}", text))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m bench featurize")
