import hashlib
import http.server
import threading
from dataclasses import replace

import pytest

from sparkvision.models import registry
from sparkvision.models.weights import ChecksumMismatchError, WeightsNotFoundError, resolve_weights

PAYLOAD = b"pretend these are HDF5 weights" * 1000


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; records requested paths."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    httpd.shutdown()


def _spec(url, file_hash):
    base = registry.get("MobileNetV2")
    return replace(base, name="TestNet", weights=replace(base.weights, filename="testnet.h5", url=url, file_hash=file_hash))


def test_download_verifies_and_caches(server, tmp_path):
    base, www, requests = server
    (www / "testnet.h5").write_bytes(PAYLOAD)
    spec = _spec(f"{base}/testnet.h5", hashlib.md5(PAYLOAD).hexdigest())
    cache = tmp_path / "cache"
    path = resolve_weights(spec, cache_dir=cache)
    assert path == cache / "testnet.h5" and path.read_bytes() == PAYLOAD
    (www / "testnet.h5").unlink()
    assert resolve_weights(spec, cache_dir=cache) == path  # second time: from the cache
    assert len(requests) == 1


def test_mirror_is_tried_first(server, tmp_path):
    base, www, requests = server
    (www / "mirror").mkdir()
    (www / "mirror" / "testnet.h5").write_bytes(PAYLOAD)
    spec = _spec("http://127.0.0.1:9/unreachable/testnet.h5", hashlib.sha256(PAYLOAD).hexdigest())
    path = resolve_weights(spec, cache_dir=tmp_path / "c", mirror_url=f"{base}/mirror/")
    assert path.read_bytes() == PAYLOAD and requests == ["/mirror/testnet.h5"]


def test_checksum_mismatch_is_not_cached(server, tmp_path):
    base, www, _ = server
    (www / "testnet.h5").write_bytes(b"tampered")
    spec = _spec(f"{base}/testnet.h5", hashlib.md5(PAYLOAD).hexdigest())
    with pytest.raises(WeightsNotFoundError, match="expected"):
        resolve_weights(spec, cache_dir=tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())


def test_corrupt_cache_entry_is_reported(tmp_path):
    spec = _spec(None, hashlib.md5(PAYLOAD).hexdigest())
    (tmp_path / "testnet.h5").write_bytes(b"bad")
    with pytest.raises(ChecksumMismatchError, match="testnet.h5"):
        resolve_weights(spec, cache_dir=tmp_path)


def test_offline_error_says_how_to_supply_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = registry.get("InceptionV3")
    with pytest.raises(WeightsNotFoundError, match=r"inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5.*--weights"):
        resolve_weights(spec, cache_dir=tmp_path, allow_download=False)


def test_explicit_file_wins_and_must_exist(tmp_path):
    f = tmp_path / "mine.h5"
    f.write_bytes(b"x")
    assert resolve_weights(registry.get("VGG16"), weights_path=str(f)) == f
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve_weights(registry.get("VGG16"), weights_path=str(tmp_path / "missing.h5"))


def test_weights_command_fetches_into_the_cache(server, tmp_path, monkeypatch, capsys):
    """`sparkvision weights` (the image's KERAS_WEIGHTS build step) downloads, verifies and reports."""
    from sparkvision import cli

    base, www, _ = server
    (www / "testnet.h5").write_bytes(PAYLOAD)
    spec = _spec(f"{base}/testnet.h5", hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    assert cli.main(["weights", "--cache-dir", str(tmp_path / "cache"), "TestNet"]) == 0
    name, path, digest = capsys.readouterr().out.strip().split("\t")
    assert (name, path) == ("TestNet", str(tmp_path / "cache" / "testnet.h5"))
    assert digest == "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    assert cli.main(["weights", "--offline", "--cache-dir", str(tmp_path / "empty"), "TestNet"]) == 2
    assert "no weights for TestNet (downloads disabled)" in capsys.readouterr().err
