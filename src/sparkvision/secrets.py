"""Credentials: the one place that knows what one looks like, and where mirror credentials come from.

Secrets reach sparkvision from the environment or a profile (``~/.netrc``, ``~/.databrickscfg``) only,
and must never reach logs, configs, model metadata, images or reports. This module

* recognises credential-named settings (:data:`SECRET_KEY`, :func:`is_secret_setting`) and
  credential-looking values (:func:`looks_like_secret`), and finds them in nested data
  (:func:`find_credentials`, used to refuse cluster specs and bundles that hold secrets);
* redacts them from text (:func:`redact_text`), nested data (:func:`redact`) and log records
  (:class:`RedactingFilter`, :func:`install_log_redaction`);
* supplies the weights mirror's credentials (:func:`mirror_auth_header`) from the environment or netrc,
  never from the URL (:func:`clean_mirror_url` drops them from it).

Databricks secret references (``{{secrets/scope/key}}``) are not credentials: they are the way to
name one.
"""

from __future__ import annotations

from sparkvision.errors import CredentialInURL
import base64
import copy
import logging
import netrc
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

log = logging.getLogger(__name__)

MIRROR_TOKEN_ENV = "SPARKVISION_WEIGHTS_MIRROR_TOKEN"
MIRROR_USER_ENV = "SPARKVISION_WEIGHTS_MIRROR_USER"
MIRROR_PASSWORD_ENV = "SPARKVISION_WEIGHTS_MIRROR_PASSWORD"
NETRC_ENV = "NETRC"

#: What a redacted setting's value becomes in :func:`redact`; :func:`redact_text` uses ``***``.
REDACTED = "***redacted***"
MASK = "***"

#: A Databricks secret reference: the name of a secret, not a secret.
SECRET_REF = re.compile(r"^\{\{secrets/[^/{}]+/[^/{}]+\}\}$")

#: Setting names that hold credentials. Searched (case-insensitively) in a key as written or, by
#: :func:`is_secret_setting`, with camelCase split into snake_case (``keyStorePassword`` ->
#: ``key_store_password``). ``spark.authenticate`` (a switch) does not match; keys whose last word
#: says the value is a file, a type, a provider class... are exempted by :func:`is_secret_setting`.
SECRET_KEY = re.compile(
    r"secret"
    r"|pass(?:word|wd|phrase)|(?<![a-z])pwd(?![a-z])"
    r"|token(?!i[sz]|s(?![a-z]))"                       # not tokenizer, not a count of tokens
    r"|credential"
    r"|(?:access|private|secret|account|storage|master|signing|sas|api)[._-]?key(?![a-z])"
    r"|apikey"
    r"|fs\.azure\.account\.key|fs\.azure\.sas\.|(?<![a-z])sas(?![a-z])"
    r"|(?<![a-z])auth(?![a-z])|authorization|(?:basic|http|proxy)[._-]?auth(?![a-z])"
    r"|bearer|connection[._-]?string",
    re.IGNORECASE,
)

# Last word of a credential-named key that says the value is not the credential itself.
_PATH_WORDS = frozenset({"file", "path", "dir", "directory", "location", "filename", "keyfile", "files"})
_META_WORDS = frozenset({
    "type", "mode", "method", "scheme", "provider", "providers", "class", "impl", "binding", "enabled", "enable",
    "disabled", "required", "name", "names", "scope", "env", "var", "ttl", "timeout", "expiry", "lifetime",
    "interval", "period", "ratio", "wait", "retries", "attempts", "size", "length", "bits", "version", "format",
    "url", "uri", "endpoint", "host", "port", "user", "username", "email", "policy", "count", "limit",
})
_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no"})
# Azure per-account settings end in the account's host: fs.azure.account.key.ACCOUNT.dfs.core.windows.net
_AZURE_HOST_SUFFIX = re.compile(r"\.[a-z0-9-]+\.(?:dfs|blob|file|queue|table|web)\.core\.[a-z.]+$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PATHLIKE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?(?:/|~|\.{1,2}/|[A-Za-z]:\\)|[/\\]|^[\w.-]+\.[A-Za-z0-9]{1,6}$")


# --- values ---------------------------------------------------------------------------------------

# URL userinfo with a password: scheme://user:password@host (abfss://container@account has none). The
# authority ends at the first / ? # or blank and its host follows the LAST '@' in it (RFC 3986), so a
# password with a raw '@' (postgresql://u:p@ss@h) is masked whole, not cut at its '@'.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@:?#'\"]*:[^/\s?#'\"]+)@")
# http(s) userinfo without a colon: the way a token is put in a URL (https://<token>@github.com/...,
# git+https://<token>@host for pip). Other schemes' bare userinfo names a container or an account
# (abfss://container@account..., ssh://git@host), not a secret.
_HTTP_USERINFO = re.compile(r"(?P<scheme>(?<![\w.+-])(?:[A-Za-z0-9.-]+\+)?https?://)(?P<userinfo>[^/\s:?#'\"]+)@",
                            re.IGNORECASE)
_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|.*)",
    re.DOTALL,
)
_AUTH_HEADER = re.compile(r"(?P<name>\bauthorization\b[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\r\n\"',}]+)", re.IGNORECASE)
# Headers whose value is a single token: X-Api-Key, api-key, X-Auth-Token, PRIVATE-TOKEN (GitLab),
# X-Vault-Token, X-Amz-Security-Token... written as "Name: value" in logs, curl commands and dict reprs.
# (``name=value`` is :data:`_ASSIGNMENT`'s.) Not after '/': https://x-access-token:...@host is userinfo.
_TOKEN_HEADER = re.compile(
    r"(?P<name>(?<![\w/.-])(?:[A-Za-z0-9]+-)*(?:api[-_]?key|(?:auth|access|private|session|security|vault)[-_]token"
    r"|x-token)[\"']?\s*:\s*[\"']?)(?P<value>\{\{[^{}\s]*\}\}|[^\s\"',;}]+)",
    re.IGNORECASE,
)
# A credential given as a command-line option: --password x, --token=x, --db-password "x y". A value
# that starts with '-' is the next option (argparse reads it so too), not the value.
_OPTION = re.compile(
    r"(?P<flag>(?<![\w-])--(?P<name>[A-Za-z][\w.-]*))(?P<sep>=|[ \t]+)"
    r"(?P<value>\"[^\"\r\n]*\"|'[^'\r\n]*'|[^\s\"'-][^\s\"'\]),;]*)"
)
_BEARER = re.compile(r"(?P<name>\b(?:Bearer|Basic|Token)\s+)(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")
_SIMPLE_VALUES = [
    re.compile(r"\bdapi[0-9a-f]{32}(?:-\d+)?\b"),                              # Databricks personal access token
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),      # AWS access key id
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"),  # GitHub tokens
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"),  # JSON Web Token
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),                           # Slack tokens
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),                                  # Google API key
    re.compile(r"\bhf_[A-Za-z0-9]{34,}"),                                    # Hugging Face token
    re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}==(?![A-Za-z0-9+/=])"),  # Azure storage account key
]
# 40 characters of base64 alphabet, bounded: an AWS secret access key if it looks random (below).
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/=])")
# A query string (a=1&b=2...): a credential if it is a signature (Azure SAS, S3/GCS presigned URL).
_QUERY = re.compile(r"[A-Za-z0-9_.~%-]+=[^\s&#\"'<>]*(?:&(?:amp;)?[A-Za-z0-9_.~%-]+=[^\s&#\"'<>]*)+")
_SIGNED_PARAMS = ("x-amz-signature", "x-amz-credential", "x-amz-security-token",
                  "x-goog-signature", "x-goog-credential")
# name=value (or "name": "value") in free text, e.g. -Dssl.keyStorePassword=x, jdbc:...?password=x
_ASSIGNMENT = re.compile(
    r"(?P<key>(?<![\w.])[A-Za-z_][\w.-]*)(?P<sep>=|[\"']\s*:\s*)(?P<quote>[\"']?)(?P<value>[^\s\"'&,;}\]]+)"
)


def _random_looking(s: str) -> bool:
    """An AWS secret access key (random base64), not a sha1, a path or a CamelCase identifier."""
    if not (any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s)):
        return False
    if all(c in "0123456789abcdefABCDEF" for c in s):
        return False
    # Words (paths, CamelCase) have lowercase runs of two letters or more, capitals one at a time and
    # digits at the end; random strings have lone lowercase letters, and capitals or digits scattered.
    lone_lower = any(len(run) == 1 for run in re.findall(r"[a-z]+", s))
    return lone_lower and (re.search(r"[A-Z]{2}", s) is not None or len(re.findall(r"[0-9]+", s)) >= 2)


def _token_like(s: str) -> bool:
    """After ``Bearer``/``Basic``: an encoded token, not a word (``Basic authentication_settings``)."""
    return any(c.isdigit() or c in "+/=" for c in s) or (any(c.isupper() for c in s) and any(c.islower() for c in s))


def _signed_query(q: str) -> bool:
    names = {p.split("=", 1)[0].lower() for p in re.split(r"&(?:amp;)?", q)}
    return ("sig" in names and bool(names & {"sv", "se"})) or bool(names & set(_SIGNED_PARAMS))


def _is_masked(value: str) -> bool:
    return value == REDACTED or (bool(value) and set(value) <= {"*"})


def _sub_assignment(m: re.Match) -> str:
    key, value = m.group("key"), m.group("value")
    if not is_secret_setting(key, value):
        return m.group(0)
    return f"{key}{m.group('sep')}{m.group('quote')}{MASK}"


def _sub_header(m: re.Match) -> str:
    """Masks a token header's value unless it is a reference, a switch or already masked (``api-key: true``)."""
    return m.group("name") + MASK if is_secret_setting(m.group("name"), m.group("value")) else m.group(0)


def _sub_option(m: re.Match) -> str:
    """Masks ``--NAME VALUE`` when NAME names a credential: not ``--password-file /run/pw``, ``--max-tokens 5``,
    nor a usage line's ``--password PASSWORD`` (argparse's metavar, which help texts and errors quote)."""
    name, value = m.group("name"), m.group("value").strip("\"'")
    if value == name.upper().replace("-", "_") or not is_secret_setting(name, value):
        return m.group(0)
    return f"{m.group('flag')}{m.group('sep')}{MASK}"


def redact_text(text: str) -> str:
    """``text`` with credentials replaced by ``***``: URL userinfo (``https://***@host``), private keys,
    tokens and keys (Databricks, AWS, GitHub, JWT, Azure...), signed query strings, Authorization and
    API-key headers, ``--password x`` options and ``password=...``-style assignments."""
    if not text or not isinstance(text, str):
        return text
    text = _PEM.sub(MASK, text)
    text = _AUTH_HEADER.sub(lambda m: m.group("name") + MASK, text)
    text = _TOKEN_HEADER.sub(_sub_header, text)
    text = _BEARER.sub(lambda m: m.group("name") + MASK if _token_like(m.group("value")) else m.group(0), text)
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _HTTP_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _OPTION.sub(_sub_option, text)
    for pattern in _SIMPLE_VALUES:
        text = pattern.sub(MASK, text)
    text = _AWS_SECRET.sub(lambda m: MASK if _random_looking(m.group(0)) else m.group(0), text)
    text = _QUERY.sub(lambda m: MASK if _signed_query(m.group(0)) else m.group(0), text)
    return _ASSIGNMENT.sub(_sub_assignment, text)


def looks_like_secret(value: str) -> bool:
    """Whether ``value`` holds something :func:`redact_text` would hide (a token, key, password in a URL...)."""
    return isinstance(value, str) and bool(value) and redact_text(value) != value


# --- settings -------------------------------------------------------------------------------------

def _normalize_key(key: str) -> str:
    return _CAMEL.sub("_", key).lower()


def _looks_like_path(value: str) -> bool:
    v = value.strip()
    return bool(v) and not any(c.isspace() for c in v) and bool(_PATHLIKE.search(v)) and not looks_like_secret(v)


def is_secret_setting(key: Any, value: Any) -> bool:
    """Whether setting ``key: value`` holds a credential because of its name (values are checked apart).

    Booleans, empty values, ``{{secrets/scope/key}}`` references and already redacted values pass;
    numbers count (``password: 123456``). Keys whose last word says the value is a file
    (``spark.authenticate.secret.file``, ``keyFile``) pass when the value is a path; keys naming a
    type, provider, class, switch, size... (``fs.azure.account.auth.type``) pass.
    """
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str):
        v = value.strip()
        if not v or v.lower() in _BOOLEAN_WORDS or SECRET_REF.match(v) or _is_masked(v):
            return False
    elif not isinstance(value, (int, float)):
        return False  # mappings and lists are looked into, not judged by their key
    norm = _normalize_key(str(key))
    if not SECRET_KEY.search(norm):
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", _AZURE_HOST_SUFFIX.sub("", norm)) if w]
    last = words[-1] if words else ""
    if last in _PATH_WORDS or norm in ("pwd", "oldpwd"):  # PWD/OLDPWD: the shell's working directories
        return not (isinstance(value, str) and _looks_like_path(value))
    return last not in _META_WORDS


def find_credentials(data: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Yield ``(path, what)`` for each credential in nested dicts/lists ``data``: ``"key"`` where a
    credential-named key holds a literal (string or number), ``"value"`` where a string looks like a
    credential. Databricks secret references, booleans and empty values pass."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            if is_secret_setting(key, value) or (isinstance(key, str) and looks_like_secret(key)):
                yield path + (key,), "key"
            else:
                yield from find_credentials(value, path + (key,))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from find_credentials(value, path + (i,))
    elif isinstance(data, str) and looks_like_secret(data):
        yield path, "value"


def redact(data: Any) -> Any:
    """A deep copy of ``data`` (dicts, lists, tuples, strings) for configs, metadata, reports and JSON
    outputs: credential-named settings' values become ``***redacted***``, strings go through
    :func:`redact_text`."""
    if isinstance(data, Mapping):
        return {(redact_text(k) if isinstance(k, str) else k): (REDACTED if is_secret_setting(k, v) else redact(v))
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, tuple):
        return tuple(redact(v) for v in data)
    if isinstance(data, str):
        return redact_text(data)
    if data is None or isinstance(data, (bool, int, float, bytes)):
        return data
    try:
        return copy.deepcopy(data)
    except Exception:  # noqa: BLE001 - an object that cannot be copied is passed on as is
        return data


# --- URLs -----------------------------------------------------------------------------------------

def strip_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``https://user:pw@host/x`` -> ``("https://host/x", ("user", "pw"))``; ``(url, None)`` without userinfo."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, (unquote(user), unquote(password))


def clean_mirror_url(url: str | None, origin: str = "network.mirror_url") -> str | None:
    """``url`` without credentials, as a mirror URL may be stored, logged and saved.

    Credentials in the userinfo (``https://user:token@host/``) are dropped with a warning: a mirror's
    credentials come from the environment or netrc (:func:`mirror_auth_header`), never from the URL. A
    signed query string (SAS, presigned URL) is refused: it is the credential and the address at once.
    """
    if not url:
        return url
    clean, creds = strip_userinfo(url)
    if creds and any(creds):
        log.warning("%s: credentials in the URL are ignored (never used, saved or shown); set %s (or %s and %s) "
                    "or a ~/.netrc entry for the mirror's host", origin, MIRROR_TOKEN_ENV, MIRROR_USER_ENV,
                    MIRROR_PASSWORD_ENV)
    if looks_like_secret(clean):
        raise CredentialInURL(f"{origin}: the URL carries a signed query string ({redact_text(clean)}): give the "
                              f"mirror's credentials in {MIRROR_TOKEN_ENV} or ~/.netrc, or pass the signed URL "
                              "in $SPARKVISION_WEIGHTS_MIRROR only (the environment is never saved)")
    return clean


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _netrc_auth(url: str) -> str | None:
    host = urlsplit(url).hostname
    if not host:
        return None
    explicit = os.environ.get(NETRC_ENV)
    path = os.path.expanduser(explicit) if explicit else os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return None
    try:
        # No file argument for ~/.netrc: Python then refuses one that others can read.
        auth = netrc.netrc(path if explicit else None).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:  # the parser's message may quote the file: not logged
        log.debug("cannot use netrc file %s (%s)", path, type(exc).__name__)
        return None
    if not auth:
        return None
    login, _account, password = auth
    return basic_auth_header(login or "", password or "") if (login or password) else None


def mirror_auth_header(url: str) -> str | None:
    """The ``Authorization`` header for the weights mirror at ``url``, or None.

    From the environment (``SPARKVISION_WEIGHTS_MIRROR_TOKEN`` -> Bearer, or
    ``SPARKVISION_WEIGHTS_MIRROR_USER`` + ``SPARKVISION_WEIGHTS_MIRROR_PASSWORD`` -> Basic), then the
    netrc file (``$NETRC`` or ``~/.netrc``) entry for the URL's host. The environment's credentials
    are for the mirror only: callers send the header to the mirror's origin and nowhere else.
    """
    token = os.environ.get(MIRROR_TOKEN_ENV)
    if token:
        return f"Bearer {token}"
    user, password = os.environ.get(MIRROR_USER_ENV), os.environ.get(MIRROR_PASSWORD_ENV)
    if user and password is not None:
        return basic_auth_header(user, password)
    return _netrc_auth(url)


# --- logging --------------------------------------------------------------------------------------

_EXC_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Redacts each record after %-formatting: the message with its args, the exception text and the
    stack. Attached to handlers, so records from every logger (sparkvision's and libraries') pass it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - logging would print the args when reporting this: hide them
            message = f"{record.msg} (unformattable arguments: {record.args!r})"
            record.msg, record.args = redact_text(message), None
        else:
            redacted = redact_text(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            redacted = redact_text(record.exc_text)
            if redacted != record.exc_text:
                # Formatters that render exc_info themselves would show the original: drop it.
                record.exc_text, record.exc_info = redacted, None
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Add a :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger) and to
    logging's last-resort handler; idempotent. Handlers added later need another call."""
    logger = logger if logger is not None else logging.getLogger()
    handlers = list(logger.handlers)
    if logger is logging.getLogger() and logging.lastResort is not None:
        handlers.append(logging.lastResort)
    found = None
    for handler in handlers:
        existing = next((f for f in handler.filters if isinstance(f, RedactingFilter)), None)
        if existing is None:
            existing = found or RedactingFilter()
            handler.addFilter(existing)
        found = found or existing
    return found or RedactingFilter()
