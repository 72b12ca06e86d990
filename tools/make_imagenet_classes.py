"""Write src/sparkvision/ml/models/imagenet_classes.json: the 1000 ImageNet-1k classes as ``[wnid, name]`` in
Keras' (and torch's) class order, i.e. sorted by WordNet id.

Run once; the file is committed and packaged. The source is darknet's class lists (Debian's ``darknet``
package, unpacked by ``make photos``): their first 1000 lines are ImageNet-1k's WordNet ids and short names.
Names get underscores for spaces, as in Keras' ``imagenet_class_index.json`` (a few names may still differ
from Keras': darknet's short names are its own).

    python tools/make_imagenet_classes.py [PHOTOS_DIR]   # default: $SPARKVISION_TEST_PHOTOS or .cache/photos
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "sparkvision" / "models" / "imagenet_classes.json"


def main(argv: list[str]) -> int:
    photos = Path(argv[0] if argv else os.environ.get("SPARKVISION_TEST_PHOTOS", ROOT / ".cache" / "photos"))
    wnids = (photos / "imagenet.labels.list").read_text().split()[:1000]
    names = (photos / "imagenet.shortnames.list").read_text().splitlines()[:1000]
    if len(wnids) != 1000 or len(names) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"{photos}: expected 1000 distinct WordNet ids and 1000 names")
    classes = sorted(zip(wnids, (n.strip().replace(" ", "_") for n in names)))
    OUT.write_text("[\n" + ",\n".join(json.dumps(list(c)) for c in classes) + "\n]\n")
    print(f"wrote {OUT} ({len(classes)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
