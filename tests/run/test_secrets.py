"""sparkvision.secrets: what a credential looks like, redaction (text, data, logs), mirror credentials."""

import base64
import io
import logging

import pytest
import yaml

from sparkvision import secrets

DATABRICKS = "dapi" + "0123456789abcdef" * 2
AWS_KEY_ID = "AKIA" + "ABCDEFGHIJKLMNOP"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
SAS = "sv=2022-11-02&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&spr=https&sig=Zm9vYmFy%2Bc2lnbmF0dXJl%3D"
AZURE_KEY = "Zm9v" * 21 + "YQ=="  # 86 base64 characters and ==
GITHUB = "ghp_" + "A1b2C3d4E5" * 4
HADOOP_KEYS = ("fs.s3a.secret.key", "fs.s3a.session.token", "fs.s3a.access.key", "spark.authenticate.secret")
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"


def _found(data):
    return list(secrets.find_credentials(data))


# --- find_credentials: one case per kind of credential --------------------------------------------

@pytest.mark.parametrize("data, expected", [
    ({"spark.hadoop.fs.azure.account.key.myaccount.dfs.core.windows.net": "c2VjcmV0"},
     [(("spark.hadoop.fs.azure.account.key.myaccount.dfs.core.windows.net",), "key")]),
    ({"spark.hadoop.fs.azure.sas.data.myaccount.blob.core.windows.net": "x"},
     [(("spark.hadoop.fs.azure.sas.data.myaccount.blob.core.windows.net",), "key")]),
    ({"images": f"https://acct.blob.core.windows.net/c?{SAS}"}, [(("images",), "value")]),
    ({"env": {"HELPER": SAS}}, [(("env", "HELPER"), "value")]),
    ({"headers": [f"Bearer {JWT}"]}, [(("headers", 0), "value")]),
    ({"note": JWT}, [(("note",), "value")]),
    ({"spark_conf": {"spark.executorEnv.HELPER": AWS_SECRET}}, [(("spark_conf", "spark.executorEnv.HELPER"), "value")]),
    ({"spark.executorEnv.HELPER": AWS_KEY_ID}, [(("spark.executorEnv.HELPER",), "value")]),
    ({"db": {"password": 123456}}, [(("db", "password"), "key")]),     # YAML reads it as an int
    ({"db": {"pwd": 1.5}}, [(("db", "pwd"), "key")]),
    ({"mirror": "https://alice:hunter2@mirror.example.com/weights"}, [(("mirror",), "value")]),
    ({"jdbc": "jdbc:postgresql://db/x?user=a&password=hunter2"}, [(("jdbc",), "value")]),
    ({"spark.executorEnv.X": DATABRICKS}, [(("spark.executorEnv.X",), "value")]),
    ({"databricks": {"token": "abc"}}, [(("databricks", "token"), "key")]),
    ({"k": GITHUB}, [(("k",), "value")]),
    ({"k": PEM}, [(("k",), "value")]),
    ({"k": AZURE_KEY}, [(("k",), "value")]),
    ({"spark.driver.extraJavaOptions": "-Djavax.net.ssl.trustStorePassword=changeit"},
     [(("spark.driver.extraJavaOptions",), "value")]),
    ({"spark.ssl.keyPassword": "x", "clientSecret": "y", "api_key": "z", "sas_token": "s", "auth": "a"},
     [(("spark.ssl.keyPassword",), "key"), (("clientSecret",), "key"), (("api_key",), "key"),
      (("sas_token",), "key"), (("auth",), "key")]),
    (dict.fromkeys(HADOOP_KEYS, "x"), [((k,), "key") for k in HADOOP_KEYS]),
], ids=["azure-account-key", "azure-sas-key", "sas-in-url", "sas-token", "bearer-jwt", "jwt", "aws-secret-key",
        "aws-access-key-id", "numeric-password", "numeric-pwd", "url-userinfo", "jdbc-password", "databricks-token",
        "token-key", "github-token", "pem", "azure-storage-key", "java-option", "key-names", "hadoop-keys"])
def test_credentials_are_found(data, expected):
    assert _found(data) == expected


@pytest.mark.parametrize("data", [
    {"spark.hadoop.fs.s3a.secret.key": "{{secrets/aws/key}}"},
    {"token": "{{secrets/a/b}}"},
    {"spark.authenticate": True},
    {"spark.authenticate": "true"},
    {"spark.authenticate.secret.file": "/run/secrets/spark"},
    {"spark.kubernetes.authenticate.submission.oauthTokenFile": "/var/run/token"},
    {"keyFile": "/etc/tls/client.key", "privateKeyPath": "~/keys/id.pem"},
    {"spark.security.credentials.hive.enabled": False, "spark.security.credentials.renewalRatio": 0.75},
    {"spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"},
    {"spark.hadoop.fs.azure.account.auth.type.myaccount.dfs.core.windows.net": "OAuth",
     "spark.hadoop.fs.azure.account.oauth2.client.id": "00000000-0000-0000-0000-000000000000",
     "spark.hadoop.fs.azure.account.oauth2.client.endpoint": "https://login.microsoftonline.com/x/oauth2/token"},
    {"spark.io.encryption.keySizeBits": 128, "max_tokens": 100, "tokenizer": "bert", "password": ""},
    {"sha1": SHA1, "sha1_upper": SHA1.upper(), "sha256": "a" * 64},
    {"path": "/Volumes/main/sparkvision/data/images1234", "cls": "MyVeryLongClassNameWithManyWordsInIt1234"},
    {"images": "abfss://container@account.dfs.core.windows.net/images", "master": "spark://host:7077"},
    {"description": "Labelled images, one sub-folder per class (a Unity Catalog volume path)."},
    {"password": secrets.REDACTED, "url": "https://***@host/x"},
], ids=["secret-ref", "token-ref", "authenticate-bool", "authenticate-str", "secret-file", "token-file", "key-files",
        "credentials-settings", "credentials-provider", "azure-oauth-settings", "sizes-and-counts", "digests",
        "paths-and-names", "storage-urls", "prose", "redacted"])
def test_harmless_settings_pass(data):
    assert _found(data) == []


def test_shipped_configs_hold_no_credentials():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [root / "bundle.yml", *root.glob("jobs/*.yml"), *root.glob("infra/**/*.yml"),
             root / "examples" / "config.yml"]
    for path in files:
        assert _found(yaml.safe_load(path.read_text())) == [], path


# --- redaction --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("GET https://user:tok@host/x failed", "GET https://***@host/x failed"),
    ("postgres://u:p%40ss@db:5432/x", "postgres://***@db:5432/x"),
    (f"token {DATABRICKS} rejected", "token *** rejected"),
    (f"keys {AWS_KEY_ID} / {AWS_SECRET}.", "keys *** / ***."),
    (f"https://a.blob.core.windows.net/c/b.h5?{SAS}", "https://a.blob.core.windows.net/c/b.h5?***"),
    (f"Authorization: Bearer {JWT}", "Authorization: ***"),
    (f"header Bearer {JWT}", "header Bearer ***"),
    (f"key:\n{PEM}\nend", "key:\n***\nend"),
    ("--conf spark.hadoop.fs.s3a.secret.key=abc123 --conf spark.ui.port=4050",
     "--conf spark.hadoop.fs.s3a.secret.key=*** --conf spark.ui.port=4050"),
    ('{"password": "hunter2", "user": "bob"}', '{"password": "***", "user": "bob"}'),
    ("-Dspark.authenticate=true -Dspark.authenticate.secret.file=/run/s",) * 2,
    (f"sha1 {SHA1} and abfss://c@a.dfs.core.windows.net/p", f"sha1 {SHA1} and abfss://c@a.dfs.core.windows.net/p"),
])
def test_redact_text(text, expected):
    assert secrets.redact_text(text) == expected
    assert secrets.looks_like_secret(text) == (text != expected)


# (text, secret): the secret must not survive redaction; None: the text must come back unchanged.
@pytest.mark.parametrize("text, secret", [
    # URL userinfo: a bare token in http(s) URLs, a password holding a raw '@'
    ("git clone https://ghtok0123456789@github.com/org/repo.git", "ghtok0123456789"),
    ("pip install git+https://Tok3nValue42@git.example.com/o/r.git", "Tok3nValue42"),
    ("GET http://Tok3nValue42@mirror.example.com:8080/w.h5 failed", "Tok3nValue42"),
    ("postgresql://app:p@ss@db.example.com/x", "p@ss"),
    ("jdbc:postgresql://app:s3cr@t@w0rd@db:5432/x?ssl=true", "s3cr@t@w0rd"),
    # API-key and token headers
    ("X-Api-Key: k3y-0123456789", "k3y-0123456789"),
    ("curl -H 'api-key: k3y-0123456789' https://api.example.com/v1", "k3y-0123456789"),
    ("x-auth-token:k3y-0123456789", "k3y-0123456789"),
    ("PRIVATE-TOKEN: glpat-k3y0123456789", "glpat-k3y0123456789"),
    ("{'X-Vault-Token': 'hvs.k3y0123456789', 'Accept': 'json'}", "hvs.k3y0123456789"),
    # command-line options
    ("mlflow server --password hunter2 --host 0.0.0.0", "hunter2"),
    ("sparkvision-helper --token Tok3nValue42 run", "Tok3nValue42"),
    ("tool --secret=Tok3nValue42", "Tok3nValue42"),
    ("psql --db-password 'two words'", "two words"),
    # must stay as they are
    ("Labelled images, one sub-folder per class; write to user@example.com for access.", None),
    ("/Volumes/a/b@c", None),
    ("s3://bucket/key", None),
    ("models:/name@champion", None),
    ("spark.authenticate=true", None),
    ("https://host/path", None),
    ("https://host:8443/a/user@example.com?owner=bob@example.com", None),
    ("git@github.com:org/repo.git", None),
    ("ssh://git@github.com/org/repo.git", None),
    ("abfss://container@account.dfs.core.windows.net/images", None),
    ("--password-file /run/secrets/pw --token-file=/run/secrets/tok", None),
    ("--max-tokens 100 --tokenizer bert --auth-type basic --no-password --verbose", None),
    ("usage: mlflow [--password PASSWORD] [--token TOKEN]", None),
    ("X-Api-Key-File: /run/secrets/key", None),
    ("api-key: {{secrets/scope/key}}", None),
    ("X-Api-Key: ***, https://***@host/x, --password ***", None),
])
def test_redaction_table(text, secret):
    redacted = secrets.redact_text(text)
    if secret is None:
        assert redacted == text and not secrets.looks_like_secret(text)
    else:
        assert secret not in redacted and secrets.MASK in redacted
        assert secrets.redact_text(redacted) == redacted  # idempotent: masked text is left alone


def test_redact_data():
    raw = {
        "network": {"mirror_url": "https://alice:tok@mirror/w", "weights": None, "download": True},
        "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "abc", "spark.authenticate.secret.file": "/run/s",
                           "spark.hadoop.fs.s3a.access.key": "{{secrets/aws/id}}", "password": 1234}},
        "notes": [f"uses {DATABRICKS}", ("t", 1)],
    }
    out = secrets.redact(raw)
    assert out == {
        "network": {"mirror_url": "https://***@mirror/w", "weights": None, "download": True},
        "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": secrets.REDACTED,
                           "spark.authenticate.secret.file": "/run/s",
                           "spark.hadoop.fs.s3a.access.key": "{{secrets/aws/id}}", "password": secrets.REDACTED}},
        "notes": ["uses ***", ("t", 1)],
    }
    assert raw["spark"]["conf"]["spark.hadoop.fs.s3a.secret.key"] == "abc"  # a copy: the input is unchanged
    assert _found(out) == []


def test_strip_userinfo():
    assert secrets.strip_userinfo("https://al%40ice:p%3Ass@host:8443/a?b=1") == (
        "https://host:8443/a?b=1", ("al@ice", "p:ss"))
    assert secrets.strip_userinfo("https://host/a") == ("https://host/a", None)


# --- logging ----------------------------------------------------------------------------------------

@pytest.fixture
def captured():
    logger = logging.getLogger("sparkvision.test_secrets")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    secrets.install_log_redaction(logger)
    secrets.install_log_redaction(logger)  # idempotent
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_log_records_are_redacted_after_formatting(captured):
    logger, stream = captured
    assert sum(isinstance(f, secrets.RedactingFilter) for f in logger.handlers[0].filters) == 1
    logger.warning("download of %s failed (%d)", f"https://user:{DATABRICKS}@mirror/w.h5", 404)
    logger.info("conf %s", {"spark.hadoop.fs.s3a.secret.key": "abc123"})
    logger.info("plain %s", "message")
    out = stream.getvalue()
    assert DATABRICKS not in out and "abc123" not in out
    assert "download of https://***@mirror/w.h5 failed (404)" in out and "plain message" in out


def test_logged_exceptions_are_redacted(captured):
    logger, stream = captured
    url = f"https://bob:{DATABRICKS}@mirror/w.h5"
    try:
        raise OSError(f"cannot open {url}")
    except OSError:
        logger.exception("fetching %s", url)
    out = stream.getvalue()
    assert DATABRICKS not in out
    assert "fetching https://***@mirror/w.h5" in out and "OSError: cannot open https://***@mirror/w.h5" in out


def test_install_log_redaction_covers_the_root_handlers(monkeypatch):
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])
    secrets.install_log_redaction()
    logging.getLogger("urllib3.connectionpool").warning("retrying %s", f"https://x:{DATABRICKS}@h/")
    assert DATABRICKS not in stream.getvalue() and "https://***@h/" in stream.getvalue()


# --- mirror credentials -----------------------------------------------------------------------------

@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for name in (secrets.MIRROR_TOKEN_ENV, secrets.MIRROR_USER_ENV, secrets.MIRROR_PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    yield monkeypatch


def _basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_mirror_auth_from_the_environment(clean_env):
    assert secrets.mirror_auth_header("https://mirror/w") is None
    clean_env.setenv(secrets.MIRROR_USER_ENV, "alice")
    clean_env.setenv(secrets.MIRROR_PASSWORD_ENV, "pw")
    assert secrets.mirror_auth_header("https://mirror/w") == _basic("alice", "pw")
    clean_env.setenv(secrets.MIRROR_TOKEN_ENV, "tok")
    assert secrets.mirror_auth_header("https://mirror/w") == "Bearer tok"


def test_credentials_in_a_mirror_url_are_dropped_not_used(clean_env, caplog):
    caplog.set_level(logging.DEBUG)
    assert secrets.clean_mirror_url("https://bob:pw0rd-77@mirror.example.com/w/") == "https://mirror.example.com/w/"
    assert "ignored" in caplog.text and "pw0rd-77" not in caplog.text
    assert secrets.mirror_auth_header("https://mirror.example.com/w") is None  # nothing kept from the URL
    assert secrets.clean_mirror_url("https://mirror.example.com/w") == "https://mirror.example.com/w"
    sas = "https://acct.blob.core.windows.net/w/?sv=2024-01-01&se=2030-01-01&sp=r&sig=AbCdEf0123456789abcdefGHIJKL%3D"
    with pytest.raises(secrets.CredentialInURL) as info:
        secrets.clean_mirror_url(sas)
    assert "AbCdEf0123456789" not in str(info.value) and "SPARKVISION_WEIGHTS_MIRROR" in str(info.value)


def test_mirror_auth_from_netrc(clean_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine mirror.example.com login carol password n3trc\n")
    netrc.chmod(0o600)
    clean_env.setenv("NETRC", str(netrc))
    assert secrets.mirror_auth_header("https://mirror.example.com/w") == _basic("carol", "n3trc")
    assert secrets.mirror_auth_header("https://other.example.com/w") is None
    netrc.write_text("n3trc-broken mirror.example.com\n")  # unparsable: no header, and the file is not quoted
    assert secrets.mirror_auth_header("https://mirror.example.com/w") is None
    assert "n3trc" not in caplog.text
