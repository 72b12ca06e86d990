"""``python -m bench featurize``: featurization speed, tuning cost and memory, measured in one run.

Every figure comes from a fresh process on the same images and cores (see :mod:`bench.workloads`):
the network's limits per engine (no Spark), the Spark featurize stage on TensorFlow (the stage as it
was) and on ``auto`` for each model, then load -> featurize -> fit / grid at N and 10 x N images with
the process tree's peak RSS. ``--scale 50000`` runs only the pipeline on 50,000 images against 2,000
(``scale.json`` / ``scale.md``). Writes ``featurize.json`` and ``featurize.md`` to ``--out``;
``--readme`` also puts the tables into docs/performance.md. ``--quick`` is the CI smoke run: one model, a few
images, same code paths; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import report
from bench.data import generated_images
from bench.procs import run_workload

ROOT = Path(__file__).resolve().parents[1]
FOOTBALL = ROOT.parent / "shared" / "data" / "football"
RANDOM_WEIGHTS_MODELS = ("InceptionV3", "ResNet50")
# 3 x 3 = 9 grid points; k-fold CV as the project's train stage runs it.
GRID = {"reg_param": [0.01, 0.1, 1.0], "elastic_net_param": [0.0, 0.5, 1.0], "max_iter": [100]}


def default_models() -> list[str]:
    from sparkvision.ml.models import registry

    return [s.name for s in registry.MODELS.values() if s.offline] + list(RANDOM_WEIGHTS_MODELS)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("featurize", help="featurization speed, tuning cost and memory")
    f.add_argument("--models", help="comma-separated registry names (default: offline ones + InceptionV3, ResNet50)")
    f.add_argument("--rss-models", default="efficientnet_lite0,InceptionV3",
                   help="models for the N / 10 x N memory and tuning runs")
    f.add_argument("--n", type=int, default=200, help="N for the memory and tuning runs (also run at 10 x N)")
    f.add_argument("--speed-images", type=int, default=640, help="images for the throughput runs")
    f.add_argument("--cores", type=int, default=2, help="local[cores] for Spark, TensorFlow threads for Keras")
    f.add_argument("--batch-size", type=int, default=None, help="network batch (default: the project's default)")
    f.add_argument("--repeats", type=int, default=3, help="warm repetitions; the best is reported")
    f.add_argument("--work", default=str(ROOT / ".cache" / "bench"), help="generated images and scratch outputs")
    f.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where featurize.json/.md go")
    f.add_argument("--readme", action="store_true", help="also write the table into docs/performance.md")
    f.add_argument("--quick", action="store_true", help="smoke mode: default model, a few images (CI)")
    f.add_argument("--scale", type=int, default=None,
                   help="only the scale run: the pipeline on this many generated images against 2,000 (e.g. 50000)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def featurize(opts: argparse.Namespace) -> dict:
    from sparkvision.ml.models import registry
    from sparkvision.settings import FeaturizeSettings

    batch = opts.batch_size or FeaturizeSettings().batch_size
    if opts.quick:
        models, rss_models = [registry.DEFAULT_MODEL], [registry.DEFAULT_MODEL]
        n, speed_n, repeats = 20, 24, 1
    else:
        models = opts.models.split(",") if opts.models else default_models()
        rss_models = [m for m in opts.rss_models.split(",") if m]
        n, speed_n, repeats = opts.n, opts.speed_images, opts.repeats
    work = os.path.abspath(opts.work)
    images = os.path.join(work, "images")
    log(f"generating images under {images} (speed set {speed_n}, N={n}" + ("" if opts.quick else f", 10N={10 * n}") + ")")
    speed_set = str(generated_images(images, speed_n))
    sizes = {"N": str(generated_images(images, n))}
    if not opts.quick:  # the smoke run takes the pipeline's code path once
        sizes["10N"] = str(generated_images(images, 10 * n))
    common = {"cores": opts.cores, "batch_size": batch, "repeats": repeats, "work": work}

    results: dict = {"machine": report.machine(opts.cores), "command": report.command(opts, parse(["featurize"])),
                     "settings": {"batch_size": batch, "cores": opts.cores, "repeats": repeats, "n": n,
                                  "speed_images": speed_n, "grid": GRID, "quick": opts.quick},
                     "throughput": [], "pipeline": []}
    datasets = [("generated", speed_set)]
    if FOOTBALL.is_dir() and not opts.quick:
        datasets.append(("football", str(FOOTBALL)))
    for model in models:
        spec = registry.get(model)
        for dataset, folder in datasets:
            if dataset != "generated" and model != registry.DEFAULT_MODEL:
                continue
            args = {**common, "model": spec.name, "images": folder}
            log(f"{spec.name} on {dataset}: engine limits, one process")
            limits = run_workload("engines", args)
            log(f"{spec.name} on {dataset}: Spark local[{opts.cores}], TensorFlow")
            spark_tf = run_workload("spark", {**args, "engine": "tensorflow"})
            log(f"{spec.name} on {dataset}: Spark local[{opts.cores}], auto (+ end to end, structs)")
            spark_auto = run_workload("spark", {**args, "engine": "auto", "e2e": True, "structs": dataset == "generated"})
            row = {"model": spec.name, "dataset": dataset, "input_size": spec.input_size,
                   "weights": "offline" if spec.offline else "random", "limits": limits,
                   "spark_tf": spark_tf, "spark_auto": spark_auto}
            if "openvino/bf16" in limits["engines"] and spec.name == registry.DEFAULT_MODEL:
                log(f"{spec.name} on {dataset}: Spark local[{opts.cores}], openvino bf16")
                row["spark_bf16"] = run_workload("spark", {**args, "engine": "openvino", "precision": "bf16"})
            results["throughput"].append(row)
            log(f"{spec.name}: limit (a) {report.best(limits, 'a_ips')[1]:.1f} img/s, (b) "
                f"{report.best(limits, 'b_ips')[1]:.1f}, Spark TF {spark_tf['warm_ips']:.1f}, "
                f"Spark {spark_auto['engine']} {spark_auto['warm_ips']:.1f}")
    for model in rss_models:
        for label, folder in sizes.items():
            log(f"{model}: load -> featurize -> fit / grid on {label}")
            run = run_workload("pipeline", {**common, "model": model, "images": folder, "label": label, "grid": GRID})
            results["pipeline"].append({"model": registry.get(model).name, "size": label, **run})
            log(f"{model} {label}: peak RSS {run['peak_rss']['bytes'] / 2**30:.2f} GiB, featurize "
                f"{run['featurize_s']:.1f} s, single fit {min(run['single_fit_s']):.1f} s, grid {run['grid_s']:.1f} s")
    results["acceptance"] = report.acceptance(results)
    return results


# The scale run fits once per fold on one grid point: what it measures is load and featurize at scale,
# and that the stages a user runs (train and evaluate too) stay within memory with the project's own
# settings (local mode's 1 GB driver heap: training on 50,000 images' features is left to CrossValidator).
SCALE_GRID = {"reg_param": [0.1], "elastic_net_param": [0.0], "max_iter": [100]}
SCALE_BASE = 2000


def scale(opts: argparse.Namespace) -> dict:
    """``sparkvision run``'s stages on ``--scale`` images and on 2,000, with throughput and peak RSS by stage."""
    from sparkvision.ml.models import registry
    from sparkvision.settings import FeaturizeSettings

    batch = opts.batch_size or FeaturizeSettings().batch_size
    model = (opts.models.split(",")[0] if opts.models else registry.DEFAULT_MODEL)
    big, base = (60, 20) if opts.quick else (opts.scale, SCALE_BASE)
    work = os.path.abspath(opts.work)
    images = os.path.join(work, "images")
    results: dict = {"machine": report.machine(opts.cores), "command": report.command(opts, parse(["featurize"])),
                     "settings": {"batch_size": batch, "cores": opts.cores, "quick": opts.quick, "model": model,
                                  "grid": SCALE_GRID}, "runs": []}
    if registry.get(model).offline:  # the one-time engine export is no part of either size's figures
        log(f"{model}: exporting the inference engines once (python -m sparkvision.ml.engines prepare)")
        subprocess.run([sys.executable, "-m", "sparkvision.ml.engines", "prepare", model], check=True,
                       stdout=subprocess.DEVNULL)
    for n in (base, big):
        log(f"generating {n} images under {images}")
        started = time.time()
        folder = str(generated_images(images, n))
        log(f"{n} images ready ({time.time() - started:.0f} s)")
        log(f"{model}: load -> featurize -> train -> evaluate on {n} images")
        run = run_workload("stages", {"cores": opts.cores, "batch_size": batch, "work": work, "model": model,
                                      "images": folder, "label": f"scale{n}", "grid": SCALE_GRID})
        run["throughput_ips"] = run["images"] / (run["load_s"] + run["featurize_s"])
        run["featurize_ips"] = run["images"] / run["featurize_s"]
        results["runs"].append({"model": registry.get(model).name, "n": n, **run})
        log(f"{n}: {run['throughput_ips']:.1f} img/s load + featurize, peak RSS "
            f"{run['peak_rss']['bytes'] / 2**30:.2f} GiB")
    results["acceptance"] = report.scale_acceptance(results)
    return results


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.scale:
        results = scale(opts)
        name, table, markers = "scale", report.scale_markdown(results), report.SCALE_MARKERS
    else:
        results = featurize(opts)
        name, table, markers = "featurize", report.markdown(results), report.FEATURIZE_MARKERS
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    if opts.readme:
        report.update_page(ROOT / report.PAGE, table, markers)
    print(table)
    log(f"wrote {out / (name + '.json')} and {out / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
