"""``python -m bench featurize``: featurization speed, tuning cost and memory, measured in one run.

Every figure comes from a fresh process on the same images and cores (see :mod:`bench.workloads`):
plain Keras (the limit) and Spark for each model, then load -> featurize -> fit / grid at N and
10 x N images with the process tree's peak RSS. Writes ``featurize.json`` and ``featurize.md`` to
``--out``; ``--readme`` also puts the table into README.md. ``--quick`` is the CI smoke run: one
model, a few images, same code paths; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from sparkvision.models import registry

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
    f.add_argument("--readme", action="store_true", help="also write the table into README.md")
    f.add_argument("--quick", action="store_true", help="smoke mode: default model, a few images (CI)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def featurize(opts: argparse.Namespace) -> dict:
    from sparkvision import config
    from sparkvision.models import registry

    defaults = config.defaults()
    batch = opts.batch_size or defaults["featurize"]["batch_size"]
    if opts.quick:
        models, rss_models = [registry.DEFAULT_MODEL], [registry.DEFAULT_MODEL]
        n, speed_n, repeats = 20, 24, 1
    else:
        models = opts.models.split(",") if opts.models else default_models()
        rss_models = [m for m in opts.rss_models.split(",") if m]
        n, speed_n, repeats = opts.n, opts.speed_images, opts.repeats
    work = os.path.abspath(opts.work)
    images = os.path.join(work, "images")
    log(f"generating images under {images} (speed set {speed_n}, N={n}, 10N={10 * n})")
    speed_set = str(generated_images(images, speed_n))
    sizes = {"N": str(generated_images(images, n)), "10N": str(generated_images(images, 10 * n))}
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
            log(f"{spec.name} on {dataset}: plain Keras")
            keras = run_workload("keras", args)
            log(f"{spec.name} on {dataset}: Spark local[{opts.cores}]")
            spark = run_workload("spark", args)
            results["throughput"].append({"model": spec.name, "dataset": dataset, "input_size": spec.input_size,
                                          "weights": "offline" if spec.offline else "random",
                                          "keras": keras, "spark": spark})
            log(f"{spec.name}: Keras predict {keras['predict_ips']:.1f} img/s, Spark warm {spark['warm_ips']:.1f}, "
                f"decoded {spark['decoded_warm_ips']:.1f}")
    for model in rss_models:
        for label, folder in sizes.items():
            log(f"{model}: load -> featurize -> fit / grid on {label}")
            run = run_workload("pipeline", {**common, "model": model, "images": folder, "label": label, "grid": GRID})
            results["pipeline"].append({"model": registry.get(model).name, "size": label, **run})
            log(f"{model} {label}: peak RSS {run['peak_rss']['bytes'] / 2**30:.2f} GiB, featurize "
                f"{run['featurize_s']:.1f} s, single fit {min(run['single_fit_s']):.1f} s, grid {run['grid_s']:.1f} s")
    results["acceptance"] = report.acceptance(results)
    return results


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    results = featurize(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "featurize.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    (out / "featurize.md").write_text(table)
    if opts.readme:
        report.update_readme(ROOT / "README.md", table)
    print(table)
    log(f"wrote {out / 'featurize.json'} and {out / 'featurize.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
