import base64
import hashlib
import http.server
import logging
import threading
from dataclasses import replace

import pytest

from sparkvision import secrets
from sparkvision.ml.models import registry
from sparkvision.ml.models.weights import ChecksumMismatchError, WeightsNotFoundError, content_path, resolve_weights

PAYLOAD = b"pretend these are HDF5 weights" * 1000
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
TOKEN = "s3cr3t-Mirror-t0ken"


class Requests(list):
    """Paths of served requests; ``headers`` holds ``(host:port, path, Authorization)`` of every GET."""

    def __init__(self):
        super().__init__()
        self.headers = []


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No mirror credentials or default cache from the machine running the tests."""
    for name in ("SPARKVISION_WEIGHTS_MIRROR", secrets.MIRROR_TOKEN_ENV, secrets.MIRROR_USER_ENV,
                 secrets.MIRROR_PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("SPARKVISION_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    yield


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; records requested paths and headers."""
    www = tmp_path / "www"
    www.mkdir()
    requests = Requests()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def do_GET(self):
            requests.headers.append((self.headers.get("Host"), self.path, self.headers.get("Authorization")))
            super().do_GET()

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
    # kept by content in the default cache ($SPARKVISION_CACHE)
    assert content_path(tmp_path / "default-cache", hashlib.sha256(b"x").hexdigest()).read_bytes() == b"x"
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


# --- mirror credentials: sent to the mirror only, never shown ---------------------------------------

def _basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _no_token_logged(caplog, *extra):
    texts = [caplog.text, *extra]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), repr(record.msg)]
    assert not any(TOKEN in t for t in texts)


def test_mirror_credentials_in_the_url_are_not_used_and_never_shown(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    base, www, requests = server
    (www / "mirror").mkdir()
    (www / "mirror" / "testnet.h5").write_bytes(PAYLOAD)
    mirror = base.replace("http://", f"http://alice:{TOKEN}@") + "/mirror/"
    spec = _spec(None, SHA256)
    path = resolve_weights(spec, cache_dir=tmp_path / "c", mirror_url=mirror)
    assert path.read_bytes() == PAYLOAD
    assert requests.headers[-1][1:] == ("/mirror/testnet.h5", None)  # the URL's credentials are not sent
    assert any("credentials in the URL are ignored" in r.getMessage() for r in caplog.records)
    _no_token_logged(caplog)

    # a failing download (404) names the URL without the credentials
    missing = replace(spec, weights=replace(spec.weights, filename="missing.h5"))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(missing, cache_dir=tmp_path / "c", mirror_url=mirror)
    assert "404" in str(info.value) and f"{base}/mirror/missing.h5" in str(info.value)
    _no_token_logged(caplog, str(info.value), repr(info.value), repr(info.value.__context__),
                     repr(info.value.__cause__))


def test_mirror_token_from_the_environment_goes_to_the_mirror_only(server, tmp_path, monkeypatch):
    base, www, requests = server
    monkeypatch.setenv(secrets.MIRROR_TOKEN_ENV, TOKEN)
    (www / "testnet.h5").write_bytes(PAYLOAD)
    port = base.rsplit(":", 1)[1]
    # the mirror (127.0.0.1) lacks the file; the origin (localhost: another host) serves it
    spec = _spec(f"http://localhost:{port}/testnet.h5", SHA256)
    path = resolve_weights(spec, cache_dir=tmp_path / "c", mirror_url=f"{base}/mirror")
    assert path.read_bytes() == PAYLOAD
    assert [(h.split(":")[0], p, auth) for h, p, auth in requests.headers] == [
        ("127.0.0.1", "/mirror/testnet.h5", f"Bearer {TOKEN}"),
        ("localhost", "/testnet.h5", None),
    ]


def test_mirror_credentials_from_netrc(server, tmp_path, monkeypatch):
    base, www, requests = server
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\n  login bob\n  password {TOKEN}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    (www / "testnet.h5").write_bytes(PAYLOAD)
    spec = _spec(None, SHA256)
    assert resolve_weights(spec, cache_dir=tmp_path / "c", mirror_url=base).read_bytes() == PAYLOAD
    assert requests.headers == [(base.split("//")[1], "/testnet.h5", _basic("bob", TOKEN))]


def test_no_credentials_no_header(server, tmp_path):
    base, www, requests = server
    (www / "testnet.h5").write_bytes(PAYLOAD)
    resolve_weights(_spec(None, SHA256), cache_dir=tmp_path / "c", mirror_url=base)
    assert requests.headers[0][2] is None


# --- explicit weights: kept by content, found by checksum when the path is gone ---------------------

def test_explicit_weights_are_found_by_checksum_after_the_file_is_deleted(tmp_path):
    spec = _spec(None, hashlib.md5(b"the published file").hexdigest())
    cache = tmp_path / "cache"
    mine = tmp_path / "mine.weights.h5"
    mine.write_bytes(PAYLOAD)
    assert resolve_weights(spec, weights_path=str(mine), cache_dir=cache) == mine
    assert content_path(cache, SHA256).read_bytes() == PAYLOAD
    mine.unlink()
    found = resolve_weights(spec, weights_path=str(mine), cache_dir=cache, expected_sha256=SHA256, allow_download=False)
    assert found.read_bytes() == PAYLOAD and found.parent == cache / "sha256"
    assert found.name.endswith(".weights.h5")  # Keras loads weights by file type
    # without the checksum a missing explicit file is still an error
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve_weights(spec, weights_path=str(mine), cache_dir=cache)


def test_a_file_with_another_checksum_is_not_accepted(server, tmp_path):
    base, www, requests = server
    spec = _spec(f"{base}/testnet.h5", None)
    cache = tmp_path / "cache"
    content_path(cache, SHA256).parent.mkdir(parents=True)
    content_path(cache, SHA256).write_bytes(b"tampered")      # wrong content under the right name
    (cache / "testnet.h5").write_bytes(b"other weights")     # the model's file, another version
    (www / "testnet.h5").write_bytes(b"other weights")       # the origin, another version
    (www / "mirror" / "sha256").mkdir(parents=True)
    (www / "mirror" / "sha256" / SHA256).write_bytes(b"tampered")   # the mirror, wrong content
    (www / "mirror" / "testnet.h5").write_bytes(b"other weights")
    gone = tmp_path / "gone.h5"
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(spec, weights_path=str(gone), cache_dir=cache, mirror_url=f"{base}/mirror",
                        expected_sha256=SHA256)
    message = str(info.value)
    assert str(gone) in message and "gone" in message and SHA256 in message
    assert str(content_path(cache, SHA256)) in message and f"{base}/mirror/sha256/{SHA256}" in message
    assert [p for _, p, _ in requests.headers] == [
        f"/mirror/sha256/{SHA256}", "/mirror/gone.h5", "/mirror/testnet.h5", "/testnet.h5"]
    assert content_path(cache, SHA256).read_bytes() == b"tampered"  # nothing replaced by a bad download


def test_explicit_weights_are_fetched_from_the_mirror_by_checksum(server, tmp_path):
    base, www, requests = server
    (www / "mirror" / "sha256").mkdir(parents=True)
    (www / "mirror" / "sha256" / SHA256).write_bytes(PAYLOAD)
    spec = _spec(None, None)
    found = resolve_weights(spec, weights_path=str(tmp_path / "gone.h5"), cache_dir=tmp_path / "c",
                            mirror_url=f"{base}/mirror", expected_sha256=SHA256.upper())
    assert found.read_bytes() == PAYLOAD and found.name == SHA256 + ".h5"
    assert [p for _, p, _ in requests.headers] == [f"/mirror/sha256/{SHA256}"]


def test_the_published_file_serves_when_it_has_the_checksum(tmp_path):
    spec = _spec(None, SHA256)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "testnet.h5").write_bytes(PAYLOAD)
    found = resolve_weights(spec, weights_path=str(tmp_path / "gone.h5"), cache_dir=tmp_path / "cache",
                            expected_sha256=SHA256, allow_download=False)
    assert found == tmp_path / "cache" / "testnet.h5"


def test_changed_explicit_file_yields_the_cached_original(tmp_path):
    spec = _spec(None, None)
    cache = tmp_path / "cache"
    mine = tmp_path / "mine.h5"
    mine.write_bytes(PAYLOAD)
    resolve_weights(spec, weights_path=str(mine), cache_dir=cache)
    mine.write_bytes(b"retrained")
    found = resolve_weights(spec, weights_path=str(mine), cache_dir=cache, expected_sha256=SHA256)
    assert found.read_bytes() == PAYLOAD
    # no copy with the expected checksum: the file is returned as is, for the caller to refuse
    other = hashlib.sha256(b"never seen").hexdigest()
    assert resolve_weights(spec, weights_path=str(mine), cache_dir=cache, expected_sha256=other) == mine


def test_unwritable_cache_does_not_fail_the_run(tmp_path):
    mine = tmp_path / "mine.h5"
    mine.write_bytes(PAYLOAD)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert resolve_weights(_spec(None, None), weights_path=str(mine), cache_dir=not_a_dir) == mine
