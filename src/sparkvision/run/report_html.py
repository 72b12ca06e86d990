"""The evaluation as one self-contained HTML page: the numbers of ``report.md``, both plots and a gallery of
the test images the model got wrong (most confident mistakes first) or only just right.

The page needs nothing else to open: no external URLs and no scripts; plots and thumbnails are ``data:``
URLs, so it can be mailed, attached to a job run or opened from object storage as one file. Every string
that comes from the data (class names, image ids) is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkvision.columns import CONFIDENCE, CONTENT, IMAGE_ID, LABEL, LABEL_INDEX, PREDICTED_LABEL, PREDICTION, PROBABILITY
from sparkvision.run.images import ImageRejected, decode_rgb
from sparkvision.run.split import TEST, TRAIN, VALIDATION

MISCLASSIFIED, LEAST_CONFIDENT = "misclassified", "least confident"
KIND = "kind"
_WRONG = "_wrong"


def gallery(predictions: DataFrame, images: DataFrame, max_wrong: int = 48, max_unsure: int = 12,
            thumb: int = 128) -> list[dict]:
    """The images worth looking at, with JPEG thumbnails: misclassified ones (most confident first), then
    the least confident correct ones (lowest confidence first); ties by image id, so reruns agree.

    Spark picks the rows; then only the chosen ids (at most ``max_wrong + max_unsure``) are looked up in
    ``images``, by a filter that Parquet pushes into its scan: no other row's bytes are shuffled, broadcast
    or collected. Connect-safe: DataFrame API only. A row whose bytes are missing or cannot be decoded keeps
    its place with ``thumbnail=None`` and the reason in ``note``.
    """
    scored = predictions.select(
        IMAGE_ID, LABEL, PREDICTED_LABEL,
        F.array_max(vector_to_array(PROBABILITY)).alias(CONFIDENCE),
        (F.col(LABEL_INDEX) != F.col(PREDICTION)).alias(_WRONG),
    )
    wrong = (scored.filter(F.col(_WRONG)).orderBy(F.desc(CONFIDENCE), IMAGE_ID).limit(max_wrong)
             .withColumn(KIND, F.lit(MISCLASSIFIED)))
    unsure = (scored.filter(~F.col(_WRONG)).orderBy(F.asc(CONFIDENCE), IMAGE_ID).limit(max_unsure)
              .withColumn(KIND, F.lit(LEAST_CONFIDENT)))
    chosen = wrong.unionByName(unsure).collect()
    # The union's order is not guaranteed: sort again, the same way.
    chosen.sort(key=lambda r: (not r[_WRONG], -r[CONFIDENCE] if r[_WRONG] else r[CONFIDENCE], r[IMAGE_ID]))
    ids = sorted({r[IMAGE_ID] for r in chosen})
    content = dict(images.filter(F.col(IMAGE_ID).isin(ids)).select(IMAGE_ID, CONTENT).collect()) if ids else {}
    items = []
    for r in chosen:
        thumbnail, note = _thumbnail(content.get(r[IMAGE_ID]), thumb)
        items.append({IMAGE_ID: r[IMAGE_ID], LABEL: r[LABEL], PREDICTED_LABEL: r[PREDICTED_LABEL],
                      CONFIDENCE: float(r[CONFIDENCE]), KIND: r[KIND], "thumbnail": thumbnail, "note": note})
    return items


def _thumbnail(content: bytes | None, thumb: int) -> tuple[bytes | None, str | None]:
    """``(jpeg, None)``, or ``(None, why not)``; decoded like everything else (EXIF orientation, modes)."""
    if content is None:
        return None, "no image bytes for this image_id in the images table"
    try:
        img = decode_rgb(bytes(content), draft=(thumb, thumb))  # JPEG draft: only decode what the thumbnail needs
    except ImageRejected as exc:
        return None, f"no thumbnail: {exc}"
    img.thumbnail((thumb, thumb))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), None


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:72em;
padding:0 1em;color:#1b1f24}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right}
th:first-child,td.name{text-align:left}thead th{background:#f6f8fa}
td.diag{background:#dafbe1;font-weight:600}tr.best td{background:#fff8c5;font-weight:600}
.headline td:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
.plots{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(11em,1fr));gap:.8em}
.card{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:.5em;background:#fff}
.card.misclassified{border-color:#cf222e}.card.least-confident{border-color:#bf8700}
img.thumb{display:block;max-width:128px;max-height:128px;margin:0 auto .4em;border:0}
.no-thumb{height:6em;display:flex;align-items:center;justify-content:center;text-align:center;
background:#f6f8fa;color:#57606a;font-size:12px;margin-bottom:.4em}
.card dl{display:grid;grid-template-columns:auto 1fr;gap:0 .5em;margin:0;font-size:12px}
.card dt{color:#57606a}.card dd{margin:0;overflow-wrap:anywhere}
.muted{color:#57606a}
"""


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _row(cells: list[str], first_is_name: bool = True, css: str = "") -> str:
    """A table row; ``cells`` are already escaped HTML."""
    tds = "".join(f'<td class="name">{c}</td>' if first_is_name and i == 0 else f"<td>{c}</td>"
                  for i, c in enumerate(cells))
    return f'<tr class="{css}">{tds}</tr>' if css else f"<tr>{tds}</tr>"


def _table(header: list[str], rows: list[str], css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _headline(metrics: dict) -> str:
    lo, hi = metrics["accuracy_ci95"]
    rows = [
        ("images evaluated", _num(metrics["n"])),
        ("accuracy (95 % CI, Wilson)", f"{_num(metrics['accuracy'])} ({_num(lo)} to {_num(hi)})"),
        (f"majority-class baseline ({escape(metrics['baseline_class'])})", _num(metrics["baseline_accuracy"])),
        ("weighted precision / recall / F1", " / ".join(_num(metrics[k]) for k in
                                                        ("precision_weighted", "recall_weighted", "f1_weighted"))),
        ("macro precision / recall / F1", " / ".join(_num(metrics[k]) for k in
                                                     ("precision_macro", "recall_macro", "f1_macro"))),
        (f"ROC AUC ({escape(metrics['roc_auc_kind'])}, from probabilities)", _num(metrics["roc_auc"])),
    ]
    if "log_loss" in metrics:
        rows.append(("log loss", _num(metrics["log_loss"])))
    for key in ("split", "model"):  # what stage_evaluate adds: which rows, which featurizer
        if key in metrics:
            rows.append((key, escape(str(metrics[key]))))
    return _table(["metric", "value"], [_row([k, v]) for k, v in rows], "headline")


def _per_class(metrics: dict) -> str:
    auc = metrics.get("roc_auc_per_class") or {}
    header = ["class", "precision", "recall", "F1", "support"] + (["ROC AUC (one-vs-rest)"] if auc else [])
    rows = []
    for name, m in metrics["per_class"].items():
        cells = [escape(name), _num(m["precision"]), _num(m["recall"]), _num(m["f1"]), _num(m["support"])]
        rows.append(_row(cells + ([_num(auc.get(name))] if auc else [])))
    return _table(header, rows)


def _confusion(metrics: dict) -> str:
    classes = metrics["classes"]
    rows = []
    for i, (name, counts) in enumerate(zip(classes, metrics["confusion_matrix"])):
        cells = "".join(f'<td class="diag">{v}</td>' if i == j else f"<td>{v}</td>" for j, v in enumerate(counts))
        rows.append(f'<tr><th scope="row">{escape(name)}</th>{cells}</tr>')
    header = ["true \\ predicted"] + [escape(c) for c in classes]
    return _table(header, rows, "confusion")


def _split(split: dict) -> str:
    rows = []
    for name, counts in split.items():
        parts = [counts.get(s, 0) for s in (TRAIN, VALIDATION, TEST)]
        rows.append(_row([escape(name)] + [_num(v) for v in parts] + [_num(sum(parts))]))
    return _table(["class", TRAIN, VALIDATION, TEST, "total"], rows)


def _tuning(tuning: dict) -> str:
    best = tuning["best_params"]
    params = list(best)
    rows = []
    for g in tuning["grid"]:
        is_best = all(g.get(p) == best[p] for p in params)
        cells = [escape(str(g.get(p))) for p in params] + [_num(g["mean"]), _num(g["std"]), "best" if is_best else ""]
        rows.append(_row(cells, first_is_name=False, css="best" if is_best else ""))
    extra = [escape(f"{tuning['engine']} engine")] if tuning.get("engine") else []
    if tuning.get("seconds") is not None:
        extra.append(f"{tuning['seconds']:.1f} s")
    caption = (f"{escape(str(tuning['metric']))}, {tuning['folds']}-fold cross-validation on training rows only"
               + "".join(f", {e}" for e in extra))
    best_text = ", ".join(f"{escape(p)} = {escape(str(v))}" for p, v in best.items())
    return (f'<p class="muted">{caption}</p>'
            + _table([escape(p) for p in params] + ["mean", "std", ""], rows, "tuning")
            + f'<p>Best point: <strong id="best-point">{best_text}</strong></p>')


def _card(item: dict) -> str:
    image_id, label, predicted = (escape(str(item[k])) for k in (IMAGE_ID, LABEL, PREDICTED_LABEL))
    confidence = _num(item[CONFIDENCE], 3)
    if item.get("thumbnail"):
        alt = f"{image_id}: true {label}, predicted {predicted} ({confidence})"
        picture = f'<img class="thumb" src="{_data_url("image/jpeg", item["thumbnail"])}" alt="{alt}">'
    else:
        picture = f'<div class="no-thumb">{escape(item.get("note") or "no thumbnail")}</div>'
    kind = str(item[KIND])
    return (f'<figure class="card {escape(kind.replace(" ", "-"))}">{picture}<figcaption><dl>'
            f"<dt>true</dt><dd>{label}</dd><dt>predicted</dt><dd>{predicted}</dd>"
            f"<dt>confidence</dt><dd>{confidence}</dd><dt>image</dt><dd><code>{image_id}</code></dd>"
            "</dl></figcaption></figure>")


def _gallery(items: list[dict]) -> str:
    parts = []
    for kind, heading, order in ((MISCLASSIFIED, "Misclassified", "most confident mistakes first"),
                                 (LEAST_CONFIDENT, "Least confident correct", "lowest confidence first")):
        group = [i for i in items if i[KIND] == kind]
        parts.append(f"<h3>{heading} ({len(group)}, {order})</h3>")
        parts.append(f'<div class="grid">{"".join(_card(i) for i in group)}</div>' if group
                     else '<p class="muted">none</p>')
    return "".join(parts)


def render(metrics: dict, split: dict | None, tuning: dict | None, confusion_png: bytes, roc_png: bytes,
           gallery: list[dict], title: str = "sparkvision evaluation") -> str:
    """The report as one HTML5 page; ``gallery`` is :func:`gallery`'s list (may be empty)."""
    t = escape(title)
    body = [
        f"<h1>{t}</h1>",
        '<section id="summary"><h2>Summary</h2>', _headline(metrics), "</section>",
        '<section id="per-class"><h2>Per class</h2>', _per_class(metrics), "</section>",
        '<section id="plots"><h2>Confusion matrix and ROC</h2>',
        '<p class="muted">Rows: true class; columns: predicted class.</p>', _confusion(metrics),
        '<div class="plots">',
        f'<figure id="confusion-matrix"><img src="{_data_url("image/png", confusion_png)}" alt="Confusion matrix plot">'
        "<figcaption>Confusion matrix</figcaption></figure>",
        f'<figure id="roc-curve"><img src="{_data_url("image/png", roc_png)}" alt="ROC curve plot">'
        f"<figcaption>ROC ({escape(metrics['roc_auc_kind'])})</figcaption></figure>",
        "</div></section>",
    ]
    if split:
        body += ['<section id="split"><h2>Split per class</h2>', _split(split), "</section>"]
    if tuning:
        body += ['<section id="tuning"><h2>Tuning</h2>', _tuning(tuning), "</section>"]
    body += ['<section id="gallery"><h2>Images to look at</h2>', _gallery(gallery), "</section>"]
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f"<title>{t}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
