"""``python -m bench.stream``: ``sparkvision stream``'s latency and backlog throughput, against batch predict.

1. A model is trained on a few generated images (``sparkvision run``; the figures do not depend on its accuracy).
2. **Backlog**: ``--backlog`` generated images (640x480 JPEGs) already in a folder; ``sparkvision stream
   --trigger available-now`` and ``sparkvision predict`` on the same folder, each a fresh process on ``local[cores]``,
   timed from start to exit (Spark start-up and model load included in both). Files/s and their ratio.
3. **Latency**: ``sparkvision stream --trigger processing-time=1s`` running; ``--drops`` images dropped one at a time
   (each written under a hidden name and renamed, ``--interval`` seconds apart); a file's latency is from its
   arrival (its modification time) to the commit of the micro-batch that holds its prediction
   (``_stream/commits/N.json``). p50 / p95 / max, after one warm-up file (the workers' start and the network's
   load are start-up, not latency).

Writes ``stream.json`` and ``stream.md`` to ``--out``; ``--readme`` also puts the table into docs/performance.md.
``--quick`` (CI) runs the same code on a few images; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKERS = ("<!-- bench:stream:start -->", "<!-- bench:stream:end -->")


def log(msg: str) -> None:
    print(f"[bench stream {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _cli(*args: str, cores: int, timeout: float = 3600) -> float:
    """``sparkvision ARGS`` in a fresh process; its wall time in seconds."""
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "sparkvision.cli", *args, "--master", f"local[{cores}]"], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"sparkvision {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.time() - started


def _flat(src: Path, dest: Path, limit: int | None = None) -> list[Path]:
    """The generated class folders' JPEGs copied into one unlabelled folder."""
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(src.rglob("*.jpg"))[:limit]
    for i, f in enumerate(files):
        shutil.copyfile(f, dest / f"{i:06d}.jpg")
    return files


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def latency(model: Path, images: list[Path], work: Path, cores: int, interval: float) -> dict:
    drop, out = work / "drop", work / "latency-out"
    shutil.rmtree(drop, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    drop.mkdir(parents=True)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    proc = subprocess.Popen([sys.executable, "-m", "sparkvision.cli", "stream", "--model", str(model), "--images",
                             str(drop), "--output", str(out), "--trigger", "processing-time=1s", "--timeout", "3600",
                             "--master", f"local[{cores}]"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    commits = out / "_stream" / "commits"
    try:
        deadline = time.time() + 300  # the query is up once its checkpoint exists (model loaded before)
        while not (out / "_stream" / "checkpoint" / "metadata").exists() and time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"stream exited early:\n{proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.2)
        # one file first, awaited: the Python workers' start and the network's load are not arrival latency
        shutil.copyfile(images[0], drop / ".warmup.jpg.part")
        os.replace(drop / ".warmup.jpg.part", drop / "warmup.jpg")
        while not list(commits.glob("*.json")) and time.time() < deadline:
            time.sleep(0.2)
        for i, src in enumerate(images):
            hidden = drop / f".{i:06d}.jpg.part"
            shutil.copyfile(src, hidden)
            os.replace(hidden, drop / f"{i:06d}.jpg")
            time.sleep(interval)
        deadline = time.time() + 600
        while time.time() < deadline:
            done = sum(json.loads(p.read_text())["predicted"] for p in commits.glob("*.json"))
            if done >= len(images) + 1:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    import pyarrow.dataset as ds

    table = ds.dataset(str(out / "predictions"), format="parquet", partitioning="hive").to_table(
        columns=["image_id", "arrived_at", "batch_id"]).to_pylist()
    committed = {int(p.stem): json.loads(p.read_text())["committed_at"] for p in commits.glob("*.json")}
    table = [r for r in table if r["image_id"] != "warmup.jpg"]
    lat = [committed[int(r["batch_id"])] - r["arrived_at"].timestamp() for r in table]
    return {"files": len(images), "predicted": len(table), "interval_s": interval, "batches": len(committed) - 1,
            "p50_s": _percentile(lat, 50), "p95_s": _percentile(lat, 95), "max_s": max(lat) if lat else float("nan")}


def backlog(model: Path, folder: Path, work: Path, cores: int) -> dict:
    n = len(list(folder.glob("*.jpg")))
    out_s, out_p = work / "backlog-stream", work / "backlog-predict"
    for d in (out_s, out_p):
        shutil.rmtree(d, ignore_errors=True)
    log(f"backlog: sparkvision stream --trigger available-now on {n:,} files")
    stream_s = _cli("stream", "--model", str(model), "--images", str(folder), "--output", str(out_s),
                    "--trigger", "available-now", cores=cores)
    summary = json.loads((out_s / "stream.json").read_text())
    log(f"backlog: sparkvision predict on the same {n:,} files")
    predict_s = _cli("predict", "--model", str(model), "--images", str(folder), "--output", str(out_p), cores=cores)
    return {"files": n, "stream_s": stream_s, "stream_fps": n / stream_s, "stream_batches": summary["batches"],
            "stream_predicted": summary["predicted"], "predict_s": predict_s, "predict_fps": n / predict_s,
            "ratio": predict_s / stream_s}


def markdown(r: dict) -> str:
    b, lat = r["backlog"], r["latency"]
    ok = "pass" if b["ratio"] >= 0.8 else "**fail**"
    return "\n".join([
        f"`{r['command']}` on {r['machine']}, {r['date']}: local[{r['cores']}], `efficientnet_lite0`, "
        "640x480 JPEGs.",
        "",
        "| run | files | seconds | files/s |",
        "|---|---|---|---|",
        f"| backlog, `sparkvision stream --trigger available-now` ({b['stream_batches']} micro-batches) | "
        f"{b['files']:,} | {b['stream_s']:.1f} | {b['stream_fps']:.1f} |",
        f"| backlog, `sparkvision predict` (batch) | {b['files']:,} | {b['predict_s']:.1f} | {b['predict_fps']:.1f} |",
        "",
        f"Stream / batch throughput on the backlog: **{b['ratio']:.2f}** (target >= 0.8: {ok}). Arrival-to-prediction "
        f"latency with `--trigger processing-time=1s`, {lat['files']} files dropped {lat['interval_s']} s apart "
        f"({lat['batches']} micro-batches): p50 **{lat['p50_s']:.1f} s**, p95 **{lat['p95_s']:.1f} s**, max "
        f"{lat['max_s']:.1f} s (from a file's modification time to the commit of its micro-batch).",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--backlog", type=int, default=10000, help="files already waiting (throughput run)")
    p.add_argument("--drops", type=int, default=60, help="files dropped one at a time (latency run)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between drops")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / ".cache" / "bench-stream"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--readme", action="store_true", help="also write the table into docs/performance.md")
    p.add_argument("--quick", action="store_true", help="smoke mode (CI): a few files; the figures mean nothing")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.backlog, opts.drops, opts.interval = 24, 4, 0.2
    from bench import report
    from bench.data import generated_images

    work = Path(opts.work)
    train_dir = Path(generated_images(str(work / "train"), 40))
    model_run = work / "model-run"
    if not (model_run / "model").exists():
        log("training a model on 40 generated images (sparkvision run)")
        _cli("run", "--images", str(train_dir), "--output", str(model_run), "--set", "train.reg_param=[0.1]",
             "--set", "train.elastic_net_param=[0.0]", "--set", "train.folds=2", cores=opts.cores)
    model = model_run / "model"
    source = Path(generated_images(str(work / "pool"), max(opts.backlog, opts.drops)))
    folder = work / f"backlog-{opts.backlog}"
    if not folder.exists():
        _flat(source, folder, opts.backlog)
    results = {"backlog": backlog(model, folder, work, opts.cores)}
    log(f"latency: {opts.drops} files dropped {opts.interval} s apart into a running stream")
    results["latency"] = latency(model, sorted(source.rglob("*.jpg"))[:opts.drops], work, opts.cores, opts.interval)
    results.update(command="python -m bench.stream" + (" --quick" if opts.quick else "") +
                   ("" if opts.backlog == 10000 or opts.quick else f" --backlog {opts.backlog}"),
                   cores=opts.cores, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   machine=report.machine(opts.cores).get("cpu", "?"))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    (out / "stream.md").write_text(table)
    print(table)
    if opts.readme:
        report.update_page(ROOT / report.PAGE, table, MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
