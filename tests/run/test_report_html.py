"""The HTML evaluation report: escaping, content, the gallery's choice of rows, and every image of the page
decoded by a real headless Chromium (Debian's /usr/bin/chromium).
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from sparkvision.stages import evaluate as ev
from sparkvision.run import report_html
from sparkvision.columns import (
    CONFIDENCE, CONTENT, IMAGE_ID, LABEL, LABEL_INDEX, PATH, PREDICTED_LABEL, PREDICTION, PROBABILITY,
)
from helpers import NO_JVM_CLIENT, _env

HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_ID = 'dir/"quoted"&<b>.jpg'
CLASSES = ["cat", "dog", HOSTILE_CLASS]
CHROMIUM_TIMEOUT = 90


def _image(fmt: str, size=(40, 20), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


# (image_id, true class, predicted class, confidence): 3 mistakes, 4 correct.
ROWS = [
    ("w-sure", 0, 1, 0.90),
    (HOSTILE_ID, 1, 2, 0.70),
    ("w-unsure", 2, 0, 0.60),
    ("r-sure", 0, 0, 0.99),
    ("r-lowest", 1, 1, 0.40),
    ("r-low", 2, 2, 0.50),
    ("r-mid", 0, 0, 0.80),
]


def _probability(pred: int, confidence: float) -> list[float]:
    rest = (1 - confidence) / (len(CLASSES) - 1)
    return [confidence if k == pred else rest for k in range(len(CLASSES))]


@pytest.fixture(scope="module")
def predictions(spark):
    rows = [(i, f"file:/data/{i}", CLASSES[t], float(t), float(p), Vectors.dense(_probability(p, c)), CLASSES[p])
            for i, t, p, c in ROWS]
    return spark.createDataFrame(rows, [IMAGE_ID, PATH, LABEL, LABEL_INDEX, PREDICTION, PROBABILITY, PREDICTED_LABEL])


@pytest.fixture(scope="module")
def images(spark):
    content = {i: _image("PNG" if n % 2 else "JPEG") for n, (i, *_rest) in enumerate(ROWS)}
    content["r-low"] = b"certainly not an image"
    del content["w-unsure"]  # no bytes at all for this one
    content.update({f"other-{n}": _image("PNG", (64, 64)) for n in range(5)})  # never chosen
    return spark.createDataFrame(sorted(content.items()), [IMAGE_ID, CONTENT])


def _metrics() -> dict:
    y = np.array([t for _, t, _, _ in ROWS])
    yhat = np.array([p for _, _, p, _ in ROWS])
    proba = np.array([_probability(p, c) for _, _, p, c in ROWS])
    m = ev.metrics_from_arrays(y, yhat, proba, CLASSES, majority_class=0)
    m.update(log_loss=0.8123, split="test", model="efficientnet_lite0")
    return m


SPLIT = {"cat": {"train": 10, "validation": 2, "test": 3}, "dog": {"train": 8, "validation": 1, "test": 2},
         HOSTILE_CLASS: {"train": 6, "validation": 1, "test": 2}}
TUNING = {"metric": "f1", "folds": 3, "engine": "local", "seconds": 1.25, "best_params":
          {"reg_param": 0.1, "elastic_net_param": 0.0, "max_iter": 100},
          "grid": [{"reg_param": 0.01, "elastic_net_param": 0.0, "max_iter": 100, "mean": 0.61, "std": 0.05},
                   {"reg_param": 0.1, "elastic_net_param": 0.0, "max_iter": 100, "mean": 0.7321, "std": 0.04}]}


@pytest.fixture(scope="module")
def items(predictions, images):
    return report_html.gallery(predictions, images, max_wrong=2, max_unsure=2, thumb=16)


@pytest.fixture(scope="module")
def page(items) -> str:
    m = _metrics()
    return report_html.render(m, SPLIT, TUNING, ev.plot_confusion_matrix(m["confusion_matrix"], CLASSES),
                              _image("PNG", (50, 40)), items)


def test_gallery_picks_confident_mistakes_then_unsure_correct_rows(items):
    assert [(i[IMAGE_ID], i["kind"]) for i in items] == [
        ("w-sure", "misclassified"), (HOSTILE_ID, "misclassified"),
        ("r-lowest", "least confident"), ("r-low", "least confident"),
    ]
    assert [i[CONFIDENCE] for i in items] == pytest.approx([0.90, 0.70, 0.40, 0.50])
    assert [(i[LABEL], i[PREDICTED_LABEL]) for i in items] == [
        ("cat", "dog"), ("dog", HOSTILE_CLASS), ("dog", "dog"), (HOSTILE_CLASS, HOSTILE_CLASS)]


def test_gallery_thumbnails_are_small_jpegs_and_undecodable_images_keep_their_place(items):
    by_id = {i[IMAGE_ID]: i for i in items}
    for image_id in ("w-sure", HOSTILE_ID, "r-lowest"):  # a JPEG and PNGs in, JPEG thumbnails out
        thumb = by_id[image_id]["thumbnail"]
        assert thumb[:2] == b"\xff\xd8" and by_id[image_id]["note"] is None
        assert Image.open(io.BytesIO(thumb)).size == (16, 8)
    assert by_id["r-low"]["thumbnail"] is None
    assert "not an image" in by_id["r-low"]["note"]


def test_gallery_reads_no_bytes_but_the_chosen_rows(spark, predictions, images, tmp_path):
    """Every row that is not chosen fails if its content is ever computed: none is."""
    images.write.parquet(str(tmp_path / "images"))
    chosen = ["w-sure", HOSTILE_ID, "r-lowest", "r-low"]
    tripwire = spark.read.parquet(str(tmp_path / "images")).withColumn(CONTENT, F.when(
        F.col(IMAGE_ID).isin(chosen), F.col(CONTENT)).otherwise(F.raise_error(F.lit("read a row not chosen"))))
    items = report_html.gallery(predictions, tripwire, max_wrong=2, max_unsure=2, thumb=16)
    assert [i[IMAGE_ID] for i in items] == chosen and sum(i["thumbnail"] is not None for i in items) == 3


def test_gallery_notes_missing_bytes(predictions, images):
    items = report_html.gallery(predictions, images, max_wrong=3, max_unsure=0)
    assert [i[IMAGE_ID] for i in items] == ["w-sure", HOSTILE_ID, "w-unsure"]
    assert items[-1]["thumbnail"] is None and "no image bytes" in items[-1]["note"]


def test_render_escapes_every_data_string(page):
    assert HOSTILE_CLASS not in page and "<script" not in page.lower()
    assert html.escape(HOSTILE_CLASS) in page
    assert HOSTILE_ID not in page and html.escape(HOSTILE_ID) in page
    assert 'alt="' + html.escape(HOSTILE_ID) in page  # attribute values too (quote=True)


def test_render_shows_every_metric_class_and_section(page):
    m = _metrics()
    lo, hi = m["accuracy_ci95"]
    for value in (m["accuracy"], lo, hi, m["baseline_accuracy"], m["precision_weighted"], m["recall_weighted"],
                  m["f1_weighted"], m["f1_macro"], m["roc_auc"], 0.8123):
        assert f"{value:.4f}" in page
    for auc in m["roc_auc_per_class"].values():
        assert f"{auc:.4f}" in page
    assert m["roc_auc_kind"] in page and "log loss" in page and "efficientnet_lite0" in page
    for name in CLASSES:
        assert page.count(html.escape(name)) >= 4  # per class, confusion rows and columns, split
    for row in m["confusion_matrix"]:
        assert all(f">{v}</td>" in page for v in row)
    assert 'id="confusion-matrix"' in page and 'id="roc-curve"' in page
    assert page.count("data:image/png;base64,") == 2
    assert page.count('class="thumb"') == 3 and page.count("data:image/jpeg;base64,") == 3
    assert "not an image" in page  # the undecodable one is listed with its note
    assert re.search(r'<tr class="best">.*?0\.7321', page)
    assert 'id="best-point">reg_param = 0.1, elastic_net_param = 0.0, max_iter = 100<' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_render_without_split_tuning_or_gallery():
    m = _metrics()
    del m["log_loss"]
    page = report_html.render(m, None, None, b"png", b"png", [])
    assert 'id="split"' not in page and 'id="tuning"' not in page and "log loss" not in page
    assert page.count('<p class="muted">none</p>') == 2


# --- real browser --------------------------------------------------------------------------------------------

def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile; skips where Debian's chromium is not installed."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium): the real-browser check needs it")
    return _run_chromium(exe, tmp_path / "chromium-profile", *args)


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT)


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1200, height: int = 1600) -> Path:
    """A PNG of the page as headless Chromium draws it (for docs/mlflow.md); raises if Chromium fails."""
    import tempfile

    exe = shutil.which("chromium")
    if exe is None:
        raise FileNotFoundError("chromium not found on PATH")
    png_path = Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as profile:
        proc = _run_chromium(exe, Path(profile), f"--screenshot={png_path}", f"--window-size={width},{height}",
                             "--hide-scrollbars", Path(html_path).resolve().as_uri())
    if proc.returncode != 0 or not png_path.is_file():
        raise RuntimeError(f"chromium screenshot failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return png_path


# Appended to a copy of the report (the report itself has no script): on the window's load event, which
# waits for every image, it writes what it found into the page, for --dump-dom to print.
CHECK = """<pre id="result">pending</pre>
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  document.getElementById("result").textContent = JSON.stringify({
    title: document.title,
    heading: document.querySelector("h1") ? document.querySelector("h1").textContent : null,
    images: imgs.length,
    loaded: imgs.filter((img) => img.complete && img.naturalWidth > 0).length,
    thumbs: document.querySelectorAll("img.thumb").length,
    scripts: document.scripts.length - 1,
    classes: Array.from(document.querySelectorAll("#per-class td.name")).map((td) => td.textContent),
    broken: imgs.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.alt),
  });
});
</script>
"""


def _checked(tmp_path: Path, page: str) -> dict:
    """What Chromium found in ``page`` once loaded (one retry: a loaded machine can dump before the load event)."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    for _ in range(2):
        proc = _chromium(tmp_path, "--virtual-time-budget=30000", "--dump-dom", checked.as_uri())
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
        if found and found.group(1) != "pending":
            return json.loads(html.unescape(found.group(1)))
    pytest.fail(f"the page never finished loading in Chromium:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def test_chromium_renders_every_image(tmp_path, page):
    assert "</body>" in page and "<script" not in page
    result = _checked(tmp_path, page)
    expected = 2 + 3  # both plots and the three thumbnails that could be made
    assert result["images"] == expected and result["thumbs"] == 3
    assert result["loaded"] == expected, result["broken"]
    assert result["title"] == result["heading"] == "sparkvision evaluation"
    assert result["scripts"] == 0 and result["classes"] == CLASSES  # the hostile class name stayed text


def test_screenshot_writes_a_png(tmp_path, page):
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed (apt-get install chromium): the screenshot needs it")
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    png = screenshot(report, tmp_path / "shot.png", width=800, height=600)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size == (800, 600)


# --- Spark Connect ------------------------------------------------------------------------------------------

GALLERY_CLIENT = """
import json, sys
from pyspark.sql import SparkSession
from sparkvision.run.report_html import gallery

spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
items = gallery(spark.read.parquet(sys.argv[2]), spark.read.parquet(sys.argv[3]), max_wrong=2, max_unsure=2, thumb=16)
print("RESULT " + json.dumps([{**i, "thumbnail": i["thumbnail"].hex() if i["thumbnail"] else None} for i in items]))
"""


@pytest.mark.slow
def test_gallery_over_connect_equals_classic(connect_server, predictions, images, items, tmp_path):
    """The same rows and thumbnails from a Connect client that cannot start a JVM."""
    for name, df in (("predictions", predictions), ("images", images)):
        df.write.parquet(str(tmp_path / name))
    proc = subprocess.run([sys.executable, "-c", NO_JVM_CLIENT.split("from sparkvision.cli")[0] + GALLERY_CLIENT,
                           connect_server, str(tmp_path / "predictions"), str(tmp_path / "images")],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    remote = [{**i, "thumbnail": bytes.fromhex(i["thumbnail"]) if i["thumbnail"] else None}
              for i in json.loads(line[len("RESULT "):])]
    assert remote == items
