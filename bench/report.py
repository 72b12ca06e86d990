"""Benchmark results -> acceptance checks, a Markdown table, and docs/performance.md's copy of it."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

GIB = 2**30
# The one page ``--readme`` rewrites (between the markers below and bench.stream's), from the repository root.
PAGE = Path("docs") / "performance.md"
FEATURIZE_MARKERS = ("<!-- bench:featurize:start -->", "<!-- bench:featurize:end -->")
SCALE_MARKERS = ("<!-- bench:scale:start -->", "<!-- bench:scale:end -->")
SPEED_MODELS = ("efficientnet_lite0", "InceptionV3")  # the acceptance's two models
LIMITS = {"vs_b": 0.9, "vs_a": 0.8, "vs_tf": 1.5, "e2e": 0.8, "grid": 1.5, "rss_growth": 1.2, "rss_gib": 6.0,
          "scale_throughput": 0.9, "bf16_amx": 1.8, "fp32_diff": 1e-4, "bf16_cosine": 0.999}


def best(limits: dict, key: str, precision: str = "fp32") -> tuple[str, float]:
    """``(engine, images/s)``: the fastest engine of a precision on ``key`` (``a_ips`` or ``b_ips``)."""
    rows = [(r[key], name) for name, r in limits["engines"].items() if r["precision"] == precision and key in r]
    value, name = max(rows)
    return name, value


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[-1].split())


def machine(cores: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    versions = {}
    for name in ("pyspark", "tensorflow", "keras", "numpy", "pillow", "onnxruntime", "openvino", "tf2onnx"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed: left out
            pass
    flags = cpu_flags()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "cores_used": cores, "memory_gib": round(mem / GIB, 1),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def command(opts, defaults) -> str:
    """The command line that reproduces ``opts``: options that differ from ``defaults`` only."""
    args = ["python", "-m", "bench", "featurize"]
    for key in ("models", "n", "speed_images", "cores", "batch_size", "repeats", "scale"):
        value = getattr(opts, key, None)
        if value is not None and value != getattr(defaults, key):
            args += [f"--{key.replace('_', '-')}", str(value)]
    args += ["--quick"] if opts.quick else []
    return shlex.join(args)


def grid_ratio(run: dict) -> float:
    """(featurize once + grid) / (featurize once + one fit): the faster single fit, so the larger ratio."""
    single = min(run["single_fit_s"])
    return (run["featurize_s"] + run["grid_s"]) / (run["featurize_s"] + single)


def _check(checks: list, check: str, model: str, value: float, limit: str, ok: bool) -> None:
    checks.append({"check": check, "model": model, "value": value, "limit": limit, "ok": ok})


def acceptance(results: dict) -> list[dict]:
    checks: list[dict] = []
    amx = results["machine"].get("amx_bf16", False)
    for row in results["throughput"]:
        if row["dataset"] != "generated":
            continue
        limits, auto, tf, model = row["limits"], row["spark_auto"], row["spark_tf"], row["model"]
        for name, r in limits["engines"].items():
            if r["precision"] == "fp32" and name != "tensorflow/fp32":
                _check(checks, f"{name} features vs TensorFlow (max abs diff)", model, r["max_abs_diff"],
                       f"<= {LIMITS['fp32_diff']:g}", r["max_abs_diff"] <= LIMITS["fp32_diff"])
        if "openvino/bf16" in limits["engines"]:
            bf16, fp32 = limits["engines"]["openvino/bf16"], limits["engines"].get("openvino/fp32")
            _check(checks, "bf16 features vs fp32 (min cosine)", model, bf16["min_cosine"],
                   f">= {LIMITS['bf16_cosine']}", bf16["min_cosine"] >= LIMITS["bf16_cosine"])
            if fp32:
                ratio = bf16["a_ips"] / fp32["a_ips"]
                _check(checks, "bf16 / fp32 (openvino, limit a)", model, ratio,
                       f">= {LIMITS['bf16_amx']} on AMX" if amx else "reported (no AMX on this CPU)",
                       ratio >= LIMITS["bf16_amx"] if amx and model == "efficientnet_lite0" else True)
        if model not in SPEED_MODELS:
            continue
        a_name, a = best(limits, "a_ips")
        b_name, b = best(limits, "b_ips")
        warm = auto["warm_ips"]
        _check(checks, f"Spark featurize ({auto['engine']}, warm) / limit (b) ({b_name})", model, warm / b,
               f">= {LIMITS['vs_b']}", warm >= LIMITS["vs_b"] * b)
        _check(checks, f"Spark featurize ({auto['engine']}, warm) / limit (a) ({a_name})", model, warm / a,
               f">= {LIMITS['vs_a']}", warm >= LIMITS["vs_a"] * a)
        _check(checks, f"Spark featurize ({auto['engine']}) / Spark featurize (tensorflow), warm", model,
               warm / tf["warm_ips"], f">= {LIMITS['vs_tf']}", warm >= LIMITS["vs_tf"] * tf["warm_ips"])
        if "e2e_ips" in auto:
            ratio = auto["e2e_ips"] / auto["e2e_featurize_ips"]
            _check(checks, "end to end (load + featurize) / featurize only", model, ratio, f">= {LIMITS['e2e']}",
                   ratio >= LIMITS["e2e"])
    by_model: dict[str, dict] = {}
    for run in results["pipeline"]:
        by_model.setdefault(run["model"], {})[run["size"]] = run
        ratio = grid_ratio(run)
        _check(checks, f"{run['grid_points']}-point grid / one fit, featurize once ({run['size']})", run["model"],
               ratio, f"<= {LIMITS['grid']}", run["grid_points"] >= 9 and ratio <= LIMITS["grid"])
    for model, runs in by_model.items():
        if {"N", "10N"} <= set(runs):
            small, big = runs["N"]["peak_rss"]["bytes"], runs["10N"]["peak_rss"]["bytes"]
            _check(checks, "peak RSS 10N / N", model, big / small, f"<= {LIMITS['rss_growth']}",
                   big <= LIMITS["rss_growth"] * small)
            _check(checks, "peak RSS at 10N (GiB)", model, big / GIB, f"< {LIMITS['rss_gib']}", big < LIMITS["rss_gib"] * GIB)
    return checks


def scale_acceptance(results: dict) -> list[dict]:
    checks: list[dict] = []
    base, big = results["runs"][0], results["runs"][-1]
    model, label = big["model"], f"{big['n']:,} / {base['n']:,} images"
    ratio = big["throughput_ips"] / base["throughput_ips"]
    _check(checks, f"throughput (load + featurize), {label}", model, ratio, f">= {LIMITS['scale_throughput']}",
           ratio >= LIMITS["scale_throughput"])
    rss = big["peak_rss"]["bytes"] / base["peak_rss"]["bytes"]
    _check(checks, f"peak RSS, {label}", model, rss, f"<= {LIMITS['rss_growth']}", rss <= LIMITS["rss_growth"])
    _check(checks, f"peak RSS at {big['n']:,} images (GiB)", model, big["peak_rss"]["bytes"] / GIB,
           f"< {LIMITS['rss_gib']}", big["peak_rss"]["bytes"] < LIMITS["rss_gib"] * GIB)
    return checks


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def _peak(run: dict) -> str:
    """A workload's peak process-tree RSS with the JVM's part, GiB: ``4.40 (1.76)``."""
    rss = run.get("peak_rss")
    if not rss:
        return "-"
    return f"{_f(rss['bytes'] / GIB, 2)} ({_f(rss['by_kind'].get('jvm', 0) / GIB, 2)})"


def _rss(run: dict) -> str:
    """Two cells: the peak RSS of the tree, and the JVM's / the Python workers' part of it (GiB)."""
    kinds = run["peak_rss"]["by_kind"]
    return (f"{_f(run['peak_rss']['bytes'] / GIB, 2)} "
            f"| {_f(kinds.get('jvm', 0) / GIB, 2)} / {_f(kinds.get('python_worker', 0) / GIB, 2)}")


def _header(results: dict, extra: str = "") -> str:
    m, s = results["machine"], results["settings"]
    bf16 = "AMX" if m.get("amx_bf16") else ("AVX512-BF16, no AMX" if m.get("avx512_bf16") else "no bf16 instructions")
    return (f"Measured {m['date']} with `{results['command']}` on {m['cpu']} ({m['cpu_count']} CPUs, "
            f"{m['memory_gib']} GiB, {bf16}), local[{s['cores']}], batch {s['batch_size']}{extra}; "
            + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "."
            + (" **Quick smoke run: these figures mean nothing.**" if s["quick"] else ""))


def _acceptance_lines(checks: list[dict]) -> list[str]:
    lines = ["| acceptance | model | measured | limit | |", "|---|---|---|---|---|"]
    for c in checks:
        value = (_f(c["value"], 6) if "cosine" in c["check"] else f"{c['value']:.2e}" if c["value"] < 0.01
                 else _f(c["value"], 2))
        lines.append(f"| {c['check']} | {c['model']} | {value} | {c['limit']} | {'pass' if c['ok'] else '**fail**'} |")
    return lines


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        _header(results, f", best of {s['repeats']} warm runs"),
        "",
        "The network's limits, one process, no Spark (images/s): *(a)* each engine on pre-decoded uint8 batches; "
        "*(b)* the same engine end to end from the encoded bytes (decode and resize on every core, then predict); "
        "features compared with TensorFlow's on the first batch.",
        "",
        "| model | input | weights | images | decode ms/image | engine | (a) pre-decoded | (b) from bytes "
        "| max abs diff vs TF | min cosine vs TF |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["throughput"]:
        lim = row["limits"]
        for name, r in lim["engines"].items():
            lines.append(
                f"| {row['model']} | {row['input_size']} | {row['weights']} | {lim['images']} {row['dataset']} "
                f"| {_f(lim['decode_ms'], 2)} | {name} | {_f(r['a_ips'])} | {_f(r['b_ips']) if 'b_ips' in r else '-'} "
                f"| {r['max_abs_diff']:.1e} | {r['min_cosine']:.6f} |")
    lines += [
        "",
        "The Spark featurize stage (images/s; JPEG bytes from `images.parquet` in, `features.parquet` out): "
        "*TF* with `featurize.engine: tensorflow` (the stage as it was), *auto* the default (the engine it chose "
        "in brackets), cold (fresh Python workers) and warm; *end to end*: load + featurize from the files on warm "
        "workers; *structs*: the featurizer fed the same images as decoded Spark image structs (sparkdl's "
        "`readImages`) from Parquet. Peak RSS of each run's process tree in GiB, the JVM's part in brackets (the "
        "auto run includes the structs pass, whose driver gets a 3 GB heap).",
        "",
        "| model | images | TF cold | TF warm | auto cold | auto warm | auto / TF | auto / best (a) | auto / best (b) "
        "| end to end | end to end / featurize | structs | bf16 warm | peak RSS TF run | peak RSS auto run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["throughput"]:
        tf, au, lim = row["spark_tf"], row["spark_auto"], row["limits"]
        a, b = best(lim, "a_ips")[1], best(lim, "b_ips")[1]
        e2e = (f"{_f(au['e2e_ips'])} | {_f(au['e2e_ips'] / au['e2e_featurize_ips'], 2)}" if "e2e_ips" in au
               else "- | -")
        structs = _f(au["decoded_warm_ips"]) if "decoded_warm_ips" in au else "-"
        bf16 = _f(row["spark_bf16"]["warm_ips"]) if "spark_bf16" in row else "-"
        lines.append(
            f"| {row['model']} | {au['images']} {row['dataset']} | {_f(tf['cold_ips'])} | {_f(tf['warm_ips'])} "
            f"| {_f(au['cold_ips'])} | {_f(au['warm_ips'])} ({au['engine']}) | {_f(au['warm_ips'] / tf['warm_ips'], 2)} "
            f"| {_f(au['warm_ips'] / a, 2)} | {_f(au['warm_ips'] / b, 2)} | {e2e} | {structs} | {bf16} "
            f"| {_peak(tf)} | {_peak(au)} |")
    lines += [
        "",
        f"Pipeline on generated images (4 classes): load -> featurize once -> one LogisticRegression fit, and a "
        f"{len(s['grid']['reg_param']) * len(s['grid']['elastic_net_param']) * len(s['grid']['max_iter'])}"
        "-point grid (regParam x elasticNetParam x maxIter) with k-fold CV on the same persisted features. "
        "Peak RSS: the whole process tree (driver Python, JVM, Python workers), sampled every 0.1 s.",
        "",
        "| model | images | engine | peak RSS GiB | of which JVM / Python workers | load s | featurize s | one fit s "
        "| grid s | grid / one fit (featurize once) | test accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["pipeline"]:
        lines.append(
            f"| {run['model']} | {run['images']} ({run['size']}) | {run.get('engine', '-')} | {_rss(run)} "
            f"| {_f(run['load_s'])} | {_f(run['featurize_s'])} | {_f(min(run['single_fit_s']))} | {_f(run['grid_s'])} "
            f"({run['grid_points']} x {run['folds']} folds) | {_f(grid_ratio(run), 2)} | {_f(run['test_accuracy'], 3)} |")
    lines += [""] + _acceptance_lines(results["acceptance"])
    return "\n".join(lines) + "\n"


def scale_markdown(results: dict) -> str:
    lines = [
        _header(results),
        "",
        "Scale: `sparkvision run`'s stages (load -> featurize -> train: one grid point, k-fold CV, refit -> "
        "evaluate) on generated 640x480 JPEGs, each size in a fresh process with the project's own Spark "
        "settings (local mode's 1 GB driver heap); throughput = images / (load s + featurize s). Peak RSS: the "
        "whole process tree, and each stage's own peak (load / featurize / train / evaluate).",
        "",
        "| model | images | engine | load s | featurize s | images/s (load + featurize) | featurize images/s "
        "| train s (tuning) | evaluate s | peak RSS GiB | of which JVM / Python workers | peak by stage GiB "
        "| test accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        by_phase = run["peak_rss"].get("by_phase", {})
        stages = " / ".join(f"{by_phase[k] / GIB:.2f}" for k in ("load", "featurize", "train", "evaluate")
                            if k in by_phase) or "-"
        lines.append(
            f"| {run['model']} | {run['images']:,} | {run.get('engine', '-')} | {_f(run['load_s'])} "
            f"| {_f(run['featurize_s'])} | {_f(run['throughput_ips'])} | {_f(run['featurize_ips'])} "
            f"| {_f(run['train_s'])} ({run.get('tuning_engine', '-')}) | {_f(run['evaluate_s'])} | {_rss(run)} "
            f"| {stages} | {_f(run['test_accuracy'], 3)} |")
    lines += [""] + _acceptance_lines(results["acceptance"])
    return "\n".join(lines) + "\n"


def update_page(page: Path, table: str, markers: tuple[str, str] = FEATURIZE_MARKERS) -> None:
    """Replace the text between the benchmark's ``markers`` in ``page`` (:data:`PAGE`, which must hold them)."""
    start, end = markers
    text = page.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{page}: markers {start} ... {end} not found")
    page.write_text(pattern.sub(lambda _: f"{start}\n{table}{end}", text))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m bench featurize")
