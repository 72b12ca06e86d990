"""Issue 24, hostile bytes: files that are images of formats we do not accept, headers that promise
more pixels than the budget, 16-bit and float images that would widen to gigabytes, and images that
exhaust memory. Each is a rejected row with its reason, in every path (load, featurize's decode, the
pyfunc model), never a decoder we did not choose and never a failed job."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from badfiles import png_bomb
from sparkvision.settings import DataSettings
from sparkvision.ml import image_model
from sparkvision.stages import load as loader
from sparkvision.ml import network
from sparkvision.run import images as imglib
from sparkvision.ml.models import registry

ACCEPTED = ", ".join(imglib.IMAGE_FORMATS)
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16_header(width: int, height: int) -> bytes:
    """A 16-bit gray PNG that claims ``width x height`` over one row of data: a few hundred bytes that
    would be ``8 * width * height`` bytes of float64 once decoded and widened."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 2 * min(width, 1024))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to claim ``width x height``."""
    data = bytearray(_save(Image.new("RGB", (16, 16), (10, 200, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _good() -> bytes:
    return _save(Image.new("RGB", (24, 16), (200, 40, 40)), "JPEG")


# --- the format gate ---------------------------------------------------------------------------------

def test_eps_named_jpg_never_reaches_its_parser_or_ghostscript(monkeypatch):
    """Unrestricted, Pillow opens these bytes as EPS (and decoding them runs Ghostscript)."""
    from PIL import EpsImagePlugin

    with Image.open(io.BytesIO(EPS)) as unrestricted:
        assert unrestricted.format == "EPS"

    def never(*a, **k):
        raise AssertionError("the EPS plugin ran")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    reason = f"unsupported image format EPS (accepted: {ACCEPTED})"
    for decode in (imglib.decode_rgb, lambda d: imglib.decode_for_model(d, 32, draft=True),
                   imglib.decode_opencv_layout):
        with pytest.raises(imglib.ImageRejected) as exc:
            decode(EPS)
        assert str(exc.value) == reason
    assert imglib.inspect(EPS) == imglib.inspect_header(EPS) == (None, None, reason)


@pytest.mark.parametrize("fmt", ["PPM", "PCX", "ICO", "SGI", "JPEG2000"])
def test_images_of_other_formats_are_named_and_refused(fmt):
    data = _save(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
    with Image.open(io.BytesIO(data)) as unrestricted:  # Pillow would decode it
        assert unrestricted.format == fmt
    assert imglib.inspect(data)[2] == f"unsupported image format {fmt} (accepted: {ACCEPTED})"


@pytest.mark.parametrize("data", [PDF, _save(Image.new("L", (8, 8)), "IM")], ids=["pdf", "im"])
def test_formats_without_a_signature_are_not_an_image_of_an_accepted_format(data):
    reason = f"not an image of an accepted format: Pillow cannot identify it as one of {ACCEPTED}"
    assert imglib.inspect_header(data)[2] == reason


def test_a_format_named_by_a_weak_signature_is_refused_all_the_same():
    """TGA has no signature; its first bytes happen to be CUR's, so the reason may name CUR: a guess at
    the name, never a decoder run."""
    data = _save(Image.new("RGB", (16, 16)), "TGA")
    w, h, reason = imglib.inspect(data)
    assert (w, h) == (None, None) and reason.endswith(f"{ACCEPTED})")


def test_every_accepted_format_still_decodes():
    rgb = Image.new("RGB", (20, 12), (0, 128, 255))
    files = {fmt: _save(rgb, fmt) for fmt in imglib.IMAGE_FORMATS}
    files["MPO"] = _save(rgb, "MPO", save_all=True, append_images=[rgb])  # a camera's two-picture JPEG
    for fmt, data in files.items():
        assert Image.open(io.BytesIO(data)).format == fmt
        assert imglib.inspect(data) == imglib.inspect_header(data) == (20, 12, None), fmt


def test_accepted_formats_are_the_extensions_formats():
    Image.init()
    by_extension = Image.registered_extensions()
    assert set(imglib.IMAGE_FORMATS) == {by_extension["." + ext] for ext in imglib.IMAGE_EXTENSIONS}


# --- the pixel budget --------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [png16_header(50_000, 50_000), jpeg_claiming(60_000, 60_000)], ids=["png16", "jpeg"])
def test_the_budget_is_checked_from_the_header_on_every_path(data, monkeypatch):
    def no_pixels(self, *a, **k):
        raise AssertionError("pixels decoded before the budget was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", no_pixels)
    paths = [imglib.decode_rgb, imglib.decode_opencv_layout, lambda d: imglib.decode_for_model(d, 224),
             lambda d: imglib.decode_for_model(d, 224, draft=True), lambda d: imglib.decode_rgb(d, draft=(64, 64))]
    for decode in paths:
        with pytest.raises(imglib.ImageRejected, match="too many pixels"):
            decode(data)
    assert "too many pixels" in imglib.inspect(data)[2] and "too many pixels" in imglib.inspect_header(data)[2]


def test_sixteen_bit_is_scaled_without_a_full_size_float64_copy():
    """12 MP of 16-bit gray: 96 MB as one float64 array, several times that in temporaries."""
    import tracemalloc

    img = Image.fromarray(np.arange(3000 * 4000, dtype=np.uint32).reshape(3000, 4000).astype(np.uint16))
    tracemalloc.start()
    try:
        out = imglib._deep_to_l(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.mode == "L" and out.size == (4000, 3000)
    assert peak < 48 << 20, f"peak {peak / 2**20:.0f} MiB"


# --- out of memory -----------------------------------------------------------------------------------

def _out_of_memory(self, *a, **k):
    raise MemoryError


def test_memory_error_while_decoding_is_a_rejected_image_on_every_path(monkeypatch):
    data = _save(Image.new("L", (40, 30), 7), "PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", _out_of_memory)
    reason = "not enough memory to decode 40x30 mode L"
    with pytest.raises(imglib.ImageRejected, match=reason):
        imglib.decode_rgb(data)
    with pytest.raises(imglib.ImageRejected, match=reason):
        imglib.decode_opencv_layout(data)
    assert imglib.inspect(data) == (None, None, reason)
    errors, positions, _ = network.decode_rows([data], registry.get("efficientnet_lite0"), 10**6)
    assert errors == [reason] and positions == []


def test_memory_error_in_the_crop_or_resize_is_the_image_too(monkeypatch):
    data = _save(Image.new("RGB", (40, 30)), "JPEG")
    monkeypatch.setattr(Image.Image, "resize", _out_of_memory)
    with pytest.raises(imglib.ImageRejected, match="not enough memory to decode 40x30 mode RGB"):
        imglib.decode_for_model(data, 16)


def test_decompression_bomb_error_while_decoding_is_a_rejected_image(monkeypatch):
    def bomb(self, *a, **k):
        raise Image.DecompressionBombError("frame larger than allowed")

    monkeypatch.setattr(ImageFile.ImageFile, "load", bomb)
    w, h, reason = imglib.inspect(_good())
    assert reason.startswith("too many pixels (decompression bomb)")


def test_running_out_of_memory_for_real_rejects_the_image_in_the_read_task(tmp_path):
    """A 400-megapixel PNG of 50 KB, allowed by max_pixels, decoded under a 150 MB address-space margin:
    Pillow's allocation fails. What the load's read task runs returns the reason (the task goes on)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(20000, 20000))
    code = textwrap.dedent(f"""
        import resource
        from sparkvision.run import images as imglib
        from sparkvision.stages import load as loader

        def vm_bytes():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))

        limit = vm_bytes() + (150 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(loader.read_and_check({str(path)!r}, 1 << 20, 10**9, "full"))
        print(imglib.inspect_header(open({str(path)!r}, "rb").read(), 10**9))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    full, header = done.stdout.splitlines()
    assert full == "(None, None, None, 'not enough memory to decode 20000x20000 mode 1')"
    assert header == "(20000, 20000, None)"  # the header check allocates no pixels


# --- the pyfunc model --------------------------------------------------------------------------------

@pytest.fixture
def classifier(monkeypatch):
    """The pyfunc's ImageClassifier with a stand-in network (every image's features are ones): what is
    tested is which rows reach the network, not what it computes."""
    spec = registry.get("efficientnet_lite0")
    monkeypatch.setattr(network, "_THREADS", network._THREADS)  # configure() sets it once per process
    monkeypatch.setattr(network, "load_worker_model", lambda key: None)
    reached = []

    def features(key, batch):
        reached.append(len(batch))
        return np.ones((len(batch), spec.feature_dim), np.float32)

    monkeypatch.setattr(network, "featurize_arrays", features)
    info = {"format": image_model.FORMAT, "network": spec.name, "weights_sha256": "0" * 64, "max_pixels": 10**6,
            "batch_size": 8, "classes": ["a", "b"], "coefficients": [[0.001] * spec.feature_dim],
            "intercepts": [0.0], "multinomial": False}
    model = image_model.ImageClassifier(info, "/nonexistent/weights.h5", threads=1)
    return model, reached


def test_pyfunc_refuses_hostile_rows_one_by_one(classifier, monkeypatch):
    model, reached = classifier
    rows = [_good(), EPS, PDF, png16_header(2000, 2000), _good()]
    out = model.predict(rows)
    assert reached == [2]  # only the two good images were decoded and run
    assert list(out["label"].isna()) == [False, True, True, True, False]
    assert out["error"][1] == f"unsupported image format EPS (accepted: {ACCEPTED})"
    assert out["error"][2].startswith("not an image of an accepted format")
    assert out["error"][3].startswith("too many pixels: 2000x2000")
    assert out["confidence"].isna().tolist() == [False, True, True, True, False]


def test_pyfunc_row_that_runs_out_of_memory_is_an_error_row(classifier, monkeypatch):
    model, _ = classifier
    real_load = ImageFile.ImageFile.load

    def load(self, *a, **k):
        if self.size == (30, 20):
            raise MemoryError
        return real_load(self, *a, **k)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    out = model.predict([_good(), _save(Image.new("RGB", (30, 20)), "PNG")])
    assert out["error"].tolist() == [None, "not enough memory to decode 30x20 mode RGB"]
    assert out["label"][1] is None and out["label"][0] in ("a", "b")


# --- a Spark load ------------------------------------------------------------------------------------

HOSTILE = {
    "dogs/eps.jpg": (EPS, "unsupported image format EPS"),
    "dogs/pdf.jpg": (PDF, "not an image of an accepted format"),
    "dogs/ppm.png": (_save(Image.new("RGB", (8, 8)), "PPM"), "unsupported image format PPM"),
    "dogs/huge16.png": (png16_header(50_000, 50_000), "too many pixels"),
    "dogs/huge.jpg": (jpeg_claiming(60_000, 60_000), "too many pixels"),
}


@pytest.mark.parametrize("validate", ["header", "full"])
def test_a_load_rejects_hostile_files_with_reasons(spark, tmp_path, validate):
    for rel, data in {**{k: v[0] for k, v in HOSTILE.items()}, "cats/a.jpg": _good(), "dogs/b.jpg": _good()}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    result = loader.load_images(spark, DataSettings(images=str(tmp_path), validate=validate))
    assert (result.accepted, result.n_rejected) == (2, len(HOSTILE))
    reasons = {r.image_id: r.reason for r in result.rejected.collect()}
    wrong = {i: reasons.get(i) for i, (_, needle) in HOSTILE.items() if needle not in (reasons.get(i) or "")}
    assert not wrong
