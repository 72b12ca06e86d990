"""Spark's shared-secret authentication (``spark.authenticate``) for standalone clusters.

Every party of a standalone cluster holds the same secret: the master and the workers (which hand it
to the executors they launch), and each driver. A client without it is refused (SASL) before it can
register an application, so nobody who merely reaches the ports can run code on the cluster.

Where the secret comes from (never from a cluster spec, a config file, the image or a command line):

``SPARKVISION_SPARK_SECRET_FILE``
    A file holding the secret (preferred): a Docker or Kubernetes secret such as
    ``/run/secrets/spark_secret``. Surrounding whitespace is ignored; the file should be readable by
    its owner only (a group/other-readable file is used, with a warning).
``SPARK_AUTH_SECRET``
    The secret itself (empty counts as not set). When both are set they must agree.
``SPARKVISION_INSECURE=1``
    Allows, on purpose, a standalone cluster without authentication: ``sparkvision submit`` to a
    ``spark://`` master and the image's ``master``/``worker`` modes refuse to run without a secret
    otherwise.

What Spark 4.3 needs on each side (checked against real daemons; see tests/e2e/test_standalone.py):

* master and worker daemons: ``-Dspark.authenticate=true`` in ``SPARK_MASTER_OPTS`` /
  ``SPARK_WORKER_OPTS`` and the secret in the environment variable ``_SPARK_AUTH_SECRET``
  (:data:`SPARK_DAEMON_SECRET_ENV`), which Spark's SecurityManager reads; the master's REST
  submission server (on by default since Spark 4.1, port 6066) does not authenticate at all and must
  be off (``-Dspark.master.rest.enabled=false``). ``infra/docker/entrypoint.sh`` and
  ``infra/standalone/local-cluster.sh`` do this.
* executors: nothing; a worker passes its own secret to the executors it launches in their
  environment, and the driver never puts ``spark.authenticate.secret`` on an executor command line.
* the driver: ``spark.authenticate=true`` **and** ``spark.authenticate.secret`` in its SparkConf.
  For a ``spark://`` master Spark accepts neither ``_SPARK_AUTH_SECRET`` nor
  ``spark.authenticate.secret.file`` ("A secret key must be specified via the
  spark.authenticate.secret config"). The secret is therefore set in-process
  (:func:`configure_session`) after the JVM is up and before the SparkContext starts, never as
  ``--conf`` of spark-submit (visible in ``ps``); Spark's UI and event logs redact it.

Authentication alone leaves the traffic in clear: task closures, broadcast models, shuffle blocks and
results (images, features, predictions) cross the cluster network readable by anyone on it. Wherever
authentication is on, so is Spark's AES-based RPC encryption (:data:`ENCRYPTION`): on the daemons' command
lines (the same two scripts), in the driver's SparkConf (:func:`session_conf`, :func:`submit_conf`), and
so in the executors, which Spark starts with the driver's ``spark.network.*`` settings.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping

from sparkvision.errors import AuthError

log = logging.getLogger(__name__)

SECRET_FILE_ENV = "SPARKVISION_SPARK_SECRET_FILE"
SECRET_ENV = "SPARK_AUTH_SECRET"
INSECURE_ENV = "SPARKVISION_INSECURE"
#: The variable Spark's SecurityManager reads in master, worker and executor processes.
SPARK_DAEMON_SECRET_ENV = "_SPARK_AUTH_SECRET"
AUTHENTICATE = "spark.authenticate"
SECRET_CONF = "spark.authenticate.secret"
#: AES-based RPC encryption (Spark's security guide, "Encryption"), which needs ``spark.authenticate``.
#: Every party must use the same values: the daemon scripts (infra/docker/entrypoint.sh,
#: infra/standalone/local-cluster.sh) repeat them, and tests/deploy/test_clusters.py checks that they do.
#: AES-GCM, not the default AES-CTR: CTR is not authenticated, so someone on the network could alter
#: RPCs (tasks, results) undetected; engine version 2 derives the session key with a final HKDF round that
#: version 1 (the default, for older peers) skips. Both are what Spark's security guide recommends.
#:
#: Local-disk encryption (``spark.io.encryption.enabled``: shuffle files, spills, disk-cached and broadcast
#: blocks) is left off: it guards against reading a worker's disk, and whoever can read that disk can
#: also read the daemon's environment (the shared secret) and the job's inputs and outputs on the shared
#: storage, which it does not cover; it would cost an encryption pass over every shuffle and spill byte.
#: A cluster that wants it sets it in its spec's ``spark_conf`` (its key then travels encrypted).
ENCRYPTION = {
    "spark.network.crypto.enabled": "true",
    "spark.network.crypto.cipher": "AES/GCM/NoPadding",
    "spark.network.crypto.authEngineVersion": "2",
}
HOW = (f"set {SECRET_FILE_ENV} to a file holding the cluster's shared secret (e.g. a Docker/Kubernetes secret "
       f"mounted at /run/secrets/spark_secret) or {SECRET_ENV} to the secret itself")


def is_standalone(master: str | None) -> bool:
    """Whether ``master`` is a standalone master (``spark://host:port``, also several for HA)."""
    return bool(master) and master.strip().lower().startswith("spark://")


def insecure_allowed(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(INSECURE_ENV, "").strip().lower() in ("1", "true", "yes")


def _clean(value: str, origin: str) -> str:
    value = value.strip()
    if not value:
        raise AuthError(f"{origin} is empty: {HOW}")
    if any(c in value for c in "\r\n"):
        raise AuthError(f"{origin} holds more than one line; the secret is one line")
    return value


def read_secret(environ: Mapping[str, str] | None = None) -> str | None:
    """The shared secret from ``$SPARKVISION_SPARK_SECRET_FILE`` or ``$SPARK_AUTH_SECRET``; None if neither is set."""
    env = os.environ if environ is None else environ
    path, literal = env.get(SECRET_FILE_ENV, "").strip(), env.get(SECRET_ENV, "")
    secret = None
    if path:
        try:
            mode = os.stat(path).st_mode
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise AuthError(f"{SECRET_FILE_ENV}={path}: cannot read the secret file ({reason})") from None
        if not stat.S_ISREG(mode):
            raise AuthError(f"{SECRET_FILE_ENV}={path} is not a regular file")
        if mode & 0o077:
            log.warning("%s=%s is readable by group or others (mode %o): chmod 600 it (Kubernetes: defaultMode 0400)",
                        SECRET_FILE_ENV, path, stat.S_IMODE(mode))
        secret = _clean(text, f"{SECRET_FILE_ENV}={path}")
    if literal.strip():
        value = _clean(literal, SECRET_ENV)
        if secret is not None and value != secret:
            raise AuthError(f"{SECRET_FILE_ENV} and {SECRET_ENV} are both set and differ: set only one")
        secret = value
    return secret


def session_conf(master: str | None, authenticate: bool = False,
                 environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Spark settings a driver for ``master`` needs: authentication on, with the secret, and RPC encryption
    (:data:`ENCRYPTION`) when ``master`` is ``spark://`` and a secret is configured; ``{}`` otherwise
    (local masters need none).

    ``authenticate``: the session already asks for ``spark.authenticate=true``; then a missing secret is an
    error naming what to set, instead of Spark's own. The result holds the secret: set it on the SparkConf
    in this process only (:func:`configure_session`), never on a command line, in a log or in a file.
    """
    if not is_standalone(master):
        return {}
    secret = read_secret(environ)
    if secret is None:
        if authenticate:
            raise AuthError(f"spark.authenticate=true for {master} but no shared secret is configured: {HOW}")
        return {}
    return {AUTHENTICATE: "true", SECRET_CONF: secret, **ENCRYPTION}


def configure_session(conf, environ: Mapping[str, str] | None = None) -> bool:
    """Turn on authentication on a driver's pyspark ``SparkConf`` in place; True if it did.

    Call it after the JVM is up (``SparkContext._ensure_initialized``) and before the SparkContext is
    created, with the conf the session will be built from (its ``spark.master`` decides): settings
    passed to ``_ensure_initialized`` become ``--conf`` arguments of the JVM's command line, so the
    secret must not go there. A secret already in ``conf`` (e.g. from spark-defaults.conf) is left alone.
    """
    if conf.get(SECRET_CONF, None):
        return False
    requested = (conf.get(AUTHENTICATE, "false") or "false").strip().lower() == "true"
    settings = session_conf(conf.get("spark.master", None), requested, environ)
    for key, value in settings.items():
        conf.set(key, value)
    return bool(settings)


def submit_conf(master: str, insecure: bool | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What spark-submit's command line gets for ``master``: ``spark.authenticate=true`` and :data:`ENCRYPTION`
    (never the secret).

    The driver process inherits the environment and reads the secret itself (:func:`configure_session`).
    Submitting to a ``spark://`` master without a secret raises, unless ``insecure`` (default: the
    ``SPARKVISION_INSECURE=1`` environment variable).
    """
    if not is_standalone(master):
        return {}
    if read_secret(environ) is not None:
        return {AUTHENTICATE: "true", **ENCRYPTION}
    if insecure is None:
        insecure = insecure_allowed(environ)
    if insecure:
        log.warning("submitting to %s WITHOUT authentication (%s=1)", master, INSECURE_ENV)
        return {}
    raise AuthError(f"refusing to submit to {master} without Spark authentication: {HOW}; or set {INSECURE_ENV}=1 "
                    "for a cluster that runs without authentication (anyone who reaches its ports can run code on it)")
