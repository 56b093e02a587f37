"""``StorageSettings``: where pneumo's bytes come from, and the only code that touches credentials.

One object (config ``data.storage``; ``storage`` of ``explain.py``) owns the Google Cloud billing project,
Requester Pays, the credentials, extra fsspec options and the I/O limits of the image store. It gives the
fsspec options of a URL (``options_for``), opens image stores (``image_store``), probes a storage endpoint
once before long work (``probe``) and describes itself without secrets for hyperparameters and
checkpoints (``to_config``).

Credentials: ``token: null`` reads ``$PNEUMO_GCS_TOKEN`` (a raw access token or a service-account JSON
path) at run time, else Application Default Credentials; a config may only name a method (``anon``,
``google_default``, ...) or a key file, never hold a token. A raw token is handed to gcsfs as a
``google.oauth2.credentials.Credentials`` object, so gcsfs never looks it up at Google's ``tokeninfo``
endpoint (a URL carrying the token, which its connection errors quote).

Every message that leaves pneumo is scrubbed of secrets, whoever wrote it (gcsfs, google-auth, aiohttp,
Hydra's error printing): ``protect_output`` puts a filter on every logging handler and wraps
``sys.stdout``/``sys.stderr``; ``scrub`` removes the registered secret values and anything shaped like a
credential (OAuth access tokens, ``access_token=`` / signature query parameters, ``Bearer`` headers, private
keys).

Example:
    >>> s = StorageSettings(project="my-billing", requester_pays=True, token="anon", concurrency=8)
    >>> s.options_for("gs://b/png")
    {'requester_pays': 'my-billing', 'project': 'my-billing', 'token': 'anon'}
    >>> s.options_for("/data/png")
    {}
    >>> scrub("GET /tokeninfo?access_token=ya29.a0AbC-123 failed")
    'GET /tokeninfo?access_token=*** failed'
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pneumo.config import to_plain
from pneumo.errors import PneumoError

log = logging.getLogger(__name__)

#: Environment variable read for gs:// credentials when ``token`` is null (keeps them out of configs).
TOKEN_ENV = "PNEUMO_GCS_TOKEN"
#: gcsfs token values that name a method rather than hold a secret.
TOKEN_METHODS = frozenset({"anon", "google_default", "cache", "cloud", "browser", "token"})
#: I/O limits of the image store (``ImageStore`` keyword arguments, ``data.storage.*``) and their defaults.
IO_DEFAULTS = {
    "concurrency": 32,
    "request_timeout_s": 60.0,
    "retry_deadline_s": 300.0,
    "retry_backoff_s": 0.5,
    "retry_backoff_max_s": 16.0,
}
#: Where gcsfs sends requests when neither ``options.endpoint_url`` nor ``$STORAGE_EMULATOR_HOST`` is set.
GCS_ENDPOINT = "https://storage.googleapis.com"
REDACTED = "***"


class StorageSettingsError(PneumoError, ValueError):
    """A storage setting that cannot be used; the message names the key and the fix."""


class StorageUnreachableError(PneumoError, ConnectionError):
    """The storage endpoint does not resolve, refuses connections or does not answer."""


# ---------------------------------------------------------------------------------------------- secrets
_registered: set[str] = set()
_registered_lock = threading.Lock()
_SECRET_PATTERNS = (
    # query parameters and form fields carrying a credential (tokeninfo URLs, signed URLs)
    (
        re.compile(
            r"((?:[?&;\s\"']|^)(?:access_token|refresh_token|id_token|client_secret|token|sig|signature|"
            r"X-Goog-Signature|X-Goog-Credential|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)=)"
            r"[^&#\s\"',)]+",
            re.I,
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(\bBearer\s+)[^\s\"',]+", re.I), r"\1" + REDACTED),
    # JSON fields of tokens and service-account keys
    (
        re.compile(r"(\"(?:access_token|refresh_token|id_token|client_secret|private_key)\"\s*:\s*\")[^\"]*"),
        r"\1" + REDACTED,
    ),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), REDACTED),
    # Google OAuth access tokens wherever they appear
    (re.compile(r"\bya29\.[\w\-.~+/]+"), REDACTED),
)


def register_secret(value: Any) -> None:
    """Scrub ``value`` (a credential string) from every message from now on (short values are ignored)."""
    if isinstance(value, str) and len(value.strip()) >= 8:
        with _registered_lock:
            _registered.add(value.strip())


def scrub(text: str) -> str:
    """``text`` without registered secrets or anything shaped like a credential.

    Example:
        >>> scrub("Authorization: Bearer abc.def")
        'Authorization: Bearer ***'
    """
    if not isinstance(text, str) or not text:
        return text
    for secret in sorted(_registered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """A URL safe to log: signature and token query parameters become ``***``.

    Example:
        >>> redact_url("https://storage.googleapis.com/b/o.csv?X-Goog-Signature=abc&x=1")
        'https://storage.googleapis.com/b/o.csv?X-Goog-Signature=***&x=1'
    """
    return scrub(url) if isinstance(url, str) else url


#: Config keys whose values are credentials (matched case-insensitively, anywhere in the key).
_SECRET_KEY = re.compile(
    r"token|secret|password|passwd|credential|private_key|api_key|access_key|signature", re.I
)


def redact_secrets(value: Any, key: str = "") -> Any:
    """A copy of a plain config tree with credentials replaced by ``***`` (for logs, hparams, TensorBoard).

    Values under secret-looking keys (``token``, ``*_secret``, ``credentials``, ...) are redacted unless they
    name a credential method (``anon``, ``google_default``, ...) or are empty; strings are scrubbed everywhere.

    Example:
        >>> redact_secrets({"data": {"token": "s3cr3t-value", "images_url": "gs://b/png"}, "lr": 0.1})
        {'data': {'token': '***', 'images_url': 'gs://b/png'}, 'lr': 0.1}
    """
    if isinstance(value, Mapping):
        return {k: redact_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v, key) for v in value)
    if key and _SECRET_KEY.search(key) and value not in (None, "", False) and value not in TOKEN_METHODS:
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    return value


class ScrubbingFilter(logging.Filter):
    """A handler filter that scrubs a record's message, arguments, traceback and stack of secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: leave it to the handler's own error path
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


class ScrubbingStream:
    """A text stream that scrubs what is written to it, then passes it on (``sys.stdout``/``sys.stderr``)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            self._stream.write(scrub(text))
        except BrokenPipeError:
            # The reader has gone (``... --help | head``): point the stream at devnull so that later writes
            # and the interpreter's final flush are silent instead of a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, buffer, errors, ...
        return getattr(self._stream, name)


_FILTER = ScrubbingFilter()


def protect_output() -> None:
    """Scrub secrets from every logging handler that exists now and from ``sys.stdout``/``sys.stderr``.

    Idempotent; called first thing by every command (before Hydra prints anything) and whenever
    ``StorageSettings`` are made (then the handlers Hydra added since are covered too). The value of
    ``$PNEUMO_GCS_TOKEN`` and the values of credential-looking overrides in ``sys.argv``
    (``register_override_secrets``) are registered as secrets.
    """
    register_secret(os.environ.get(TOKEN_ENV))
    register_override_secrets(sys.argv[1:])
    for name in (None, *list(logging.Logger.manager.loggerDict)):
        logger = logging.getLogger(name)
        for handler in getattr(logger, "handlers", []):
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ScrubbingStream):
            setattr(sys, name, ScrubbingStream(stream))


def is_secret_value(key: str, value: Any) -> bool:
    """Whether ``value``, found under config key ``key``, is a credential to keep out of every file and message:
    a non-empty string under a secret-looking key (``token``, ``*_secret``, ``password``, ...) that is neither
    a credential method (``anon``, ``google_default``, ...) nor the path of an existing key file.

    Example:
        >>> is_secret_value("data.storage.options.token", "ya29.abc"), is_secret_value("token", "anon")
        (True, False)
    """
    if not key or not _SECRET_KEY.search(str(key)) or not isinstance(value, str):
        return False
    text = value.strip().strip("'\"")
    if text.lower() in ("", "null", "none", "true", "false", "???") or text in TOKEN_METHODS:
        return False
    return not os.path.isfile(os.path.expanduser(text))  # a key file's path is not the key


def register_override_secrets(args: Any) -> list[str]:
    """Register the values of command-line overrides whose key looks like a credential
    (``+data.storage.options.token=ya29...``, ``+logger.x.api_key=...``) as secrets; returns them.

    Called by ``protect_output`` with ``sys.argv``, before Hydra reads the overrides: whatever quotes them
    afterwards (Hydra's errors, its saved ``.hydra/*.yaml``, logs) is scrubbed.

    Example:
        >>> register_override_secrets(["trainer.max_epochs=1", "+data.storage.options.token=opaque-1234"])
        ['opaque-1234']
    """
    found = []
    for arg in args or ():
        key, sep, value = str(arg).partition("=")
        if sep and is_secret_value(key.lstrip("+~"), value):
            found.append(value.strip().strip("'\""))
            register_secret(found[-1])
    return found


def register_config_secrets(tree: Any, key: str = "") -> list[str]:
    """Register every credential of a plain config tree (``is_secret_value``), and the values of
    ``key=value`` override strings under secret-looking keys (Hydra's ``hydra.overrides.task``); returns them.

    Example:
        >>> register_config_secrets({"notes": {"api_key": "k-0123456789"}, "hydra": {"x": ["a.token=t-0123456789"]}})
        ['k-0123456789', 't-0123456789']
    """
    found: list[str] = []
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            found += register_config_secrets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            found += register_override_secrets([v]) if isinstance(v, str) and "=" in v else []
            found += register_config_secrets(v, key) if not isinstance(v, str) else []
    elif is_secret_value(key, tree):
        found.append(str(tree).strip())
        register_secret(found[-1])
    return found


def scrub_file(path: str | os.PathLike) -> bool:
    """Rewrite a text file without credentials (``scrub``); returns whether it held any. Binary files (a NUL
    byte, or not UTF-8) are left as they are: the writers of checkpoints and event files redact at source.

    Example:
        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "overrides.yaml"
        >>> _ = f.write_text("- +token=ya29.abcdef\\n")
        >>> scrub_file(f), f.read_text()
        (True, '- +token=***\\n')
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if "\0" in text:
        return False
    clean = scrub(text)
    if clean == text:
        return False
    # In place, not a renamed copy: a log handler may hold the file open and goes on appending to it.
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(clean)
    return True


def scrub_folder(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """``scrub_file`` on every file of ``folder`` (and below it, unless not ``recursive``); returns the files
    that held credentials (none when ``folder`` does not exist)."""
    changed: list[str] = []
    if not os.path.isdir(folder):
        return changed
    for here, dirs, files in os.walk(os.fspath(folder)):
        for name in sorted(files):
            path = os.path.join(here, name)
            if not os.path.islink(path) and scrub_file(path):
                changed.append(path)
        if not recursive:
            dirs.clear()
    return changed


def _scrub_saved_config(secret: str) -> str:
    """Scrub ``secret`` (registered) from the config files Hydra saved for this run (``.hydra/*.yaml``,
    written before any pneumo code runs); returns their folder, or ``""`` when there is none or nothing held it."""
    register_secret(secret)
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return ""
        hydra_cfg = HydraConfig.get()
        folder = os.path.join(hydra_cfg.runtime.output_dir, hydra_cfg.output_subdir or ".hydra")
    except Exception:  # noqa: BLE001 - no Hydra run: nothing was saved
        return ""
    return folder if scrub_folder(folder, recursive=False) else ""


def check_io_limits(**io_limits: float) -> dict:
    """The image store's I/O limits (``IO_DEFAULTS`` for those not given), checked; one-line errors.

    Example:
        >>> check_io_limits(concurrency=8)["concurrency"], check_io_limits()["retry_deadline_s"]
        (8, 300.0)
    """
    unknown = sorted(set(io_limits) - set(IO_DEFAULTS))
    if unknown:
        raise StorageSettingsError(
            f"unknown data.storage key(s) {unknown}; known: project, requester_pays, token, options, "
            + ", ".join(IO_DEFAULTS)
        )
    try:
        io = {k: type(v)(io_limits.get(k, v)) for k, v in IO_DEFAULTS.items()}
    except (TypeError, ValueError) as err:
        raise StorageSettingsError(f"data.storage I/O limits must be numbers: {err}") from None
    if io["concurrency"] < 1:
        raise StorageSettingsError(f"data.storage.concurrency must be >= 1, got {io['concurrency']}")
    for key in list(IO_DEFAULTS)[1:]:
        if not io[key] > 0:
            raise StorageSettingsError(f"data.storage.{key} must be > 0, got {io[key]:g}")
    return io


# ---------------------------------------------------------------------------------------------- settings
def protocol_of(url: str) -> str:
    """The fsspec protocol of a path or URL (``gs``, ``file``, ``memory``, ...)."""
    return url.split("://", 1)[0] if "://" in url else "file"


def _is_gcs(url: str) -> bool:
    return protocol_of(str(url)) in ("gs", "gcs")


class StorageSettings:
    """Billing, credentials, fsspec options and I/O limits of every read (config ``data.storage``).

    Args:
        project: Google Cloud billing project of Requester Pays buckets (sent as ``userProject``).
        requester_pays: the ``gs://`` bucket bills the requester (NIH's public copy does).
        token: gcsfs credentials: ``None`` = ``$PNEUMO_GCS_TOKEN`` if set (raw access token or
            service-account JSON path), else Application Default Credentials; a method name (``anon`` for
            public buckets and emulators, ``google_default``, ``cloud``, ``cache``) or a service-account JSON
            path. Raw tokens are refused here: configs are saved with every run.
        options: extra fsspec options for every URL (e.g. ``endpoint_url`` of an emulator); no credentials.
        io_limits: the image store's I/O limits (defaults ``IO_DEFAULTS``):
        concurrency: requests in flight per process when fetching many images.
        request_timeout_s: limit of one request; the endpoint probe waits at most ``min(this, 10)`` s.
        retry_deadline_s: time one object may take, retries included.
        retry_backoff_s, retry_backoff_max_s: first and longest pause between attempts (jittered, doubling).
    """

    def __init__(
        self,
        project: str | None = None,
        requester_pays: bool = False,
        token: str | None = None,
        options: Mapping | None = None,
        **io_limits: float,
    ) -> None:
        protect_output()
        self.project = str(project) if project else None
        self.requester_pays = bool(requester_pays)
        self.options = dict(to_plain(options) or {})
        credential_keys = sorted(k for k in self.options if _SECRET_KEY.search(str(k)))
        if credential_keys:
            raise StorageSettingsError(
                f"data.storage.options may not hold credentials ({', '.join(credential_keys)}): use "
                f"data.storage.token (anon, google_default or a key file path) or ${TOKEN_ENV}"
            )
        self.io = check_io_limits(**io_limits)
        self.token = self._config_token(token)
        self._credentials: Any = None
        self._probed: set[str] = set()

    @classmethod
    def from_config(
        cls, value: StorageSettings | Mapping | None, key: str = "data.storage"
    ) -> StorageSettings:
        """Settings from a config mapping (``_target_`` ignored), settings as they are, or defaults; ``key``
        is the command's name of the settings (``storage`` for explain.py and the evaluate command), which
        its one-line errors name.

        Example:
            >>> StorageSettings.from_config({"concurrency": 0}, key="storage")
            Traceback (most recent call last):
            ...
            pneumo.io.storage.StorageSettingsError: storage.concurrency must be >= 1, got 0
        """
        if isinstance(value, StorageSettings):
            return value
        plain = {k: v for k, v in (to_plain(value) or {}).items() if k != "_target_"}
        try:
            return cls(**plain)
        except StorageSettingsError as err:
            if key == "data.storage":
                raise
            # the messages name the training config's keys: this command's key instead
            raise StorageSettingsError(re.sub(r"\bdata\.storage\b", key, str(err))) from None

    @staticmethod
    def _config_token(token: Any) -> str | None:
        if token is None or token == "":
            return None
        if not isinstance(token, str):
            raise StorageSettingsError(
                "data.storage.token must be null, a method name (anon, google_default, cloud, cache) or a "
                f"service-account JSON path; put raw tokens in ${TOKEN_ENV}"
            )
        if token in TOKEN_METHODS or os.path.isfile(os.path.expanduser(token)):
            return token
        register_secret(token)  # it may be a raw token: never echo it
        scrubbed = _scrub_saved_config(token)
        raise StorageSettingsError(
            "data.storage.token is neither a method name (anon, google_default, cloud, cache) nor an existing "
            f"service-account JSON file; raw access tokens go in ${TOKEN_ENV} (configs are saved with the run"
            f"{'; removed from ' + scrubbed if scrubbed else ''})"
        )

    # ------------------------------------------------------------------ credentials
    def credentials(self) -> Any:
        """What gcsfs gets as ``token`` (``None`` = its default chain); reads ``$PNEUMO_GCS_TOKEN`` once."""
        if self.token is not None:
            return self.token
        if self._credentials is None:
            raw = (os.environ.get(TOKEN_ENV) or "").strip()
            if not raw:
                self._credentials = False  # Application Default Credentials
            elif os.path.isfile(os.path.expanduser(raw)):
                self._credentials = os.path.expanduser(raw)  # service-account key file
            else:
                register_secret(raw)
                from google.oauth2.credentials import Credentials

                # A Credentials object: gcsfs uses it as it is (no tokeninfo lookup of the raw token).
                self._credentials = Credentials(raw)
        return self._credentials or None

    # ------------------------------------------------------------------ options and stores
    def options_for(self, url: str) -> dict:
        """fsspec options for ``url``: the Google Cloud settings apply to ``gs://`` URLs only."""
        options: dict = {}
        if _is_gcs(url):
            if self.requester_pays:
                # A string names the project billed (userProject); True bills the credentials' own project.
                options["requester_pays"] = self.project if self.project else True
            if self.project:
                options["project"] = self.project
            credentials = self.credentials()
            if credentials is not None:
                options["token"] = credentials
        options.update(self.options)
        return options

    def to_config(self) -> dict:
        """These settings as plain data without credentials (for hyperparameters and checkpoints).

        Example:
            >>> StorageSettings(project="p", token="anon").to_config()["token"]
            'anon'
        """
        return {
            "project": self.project,
            "requester_pays": self.requester_pays,
            "token": self.token,
            "options": redact_secrets(self.options),
            **self.io,
        }

    def __repr__(self) -> str:
        return f"StorageSettings({self.to_config()})"

    # ------------------------------------------------------------------ probe
    def endpoint_of(self, url: str) -> str | None:
        """The HTTP endpoint serving ``url`` (``gs://`` and ``bq://``; ``None`` for local paths and other
        protocols)."""
        if str(url).startswith("bq://"):  # BigQuery: its emulator ($BIGQUERY_EMULATOR_HOST) or the service
            host = os.environ.get("BIGQUERY_EMULATOR_HOST", "").strip()
            if not host:
                return "https://bigquery.googleapis.com"
            return host if host.startswith(("http://", "https://")) else f"http://{host}"
        if not _is_gcs(url):
            return None
        endpoint = self.options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST", "")
        if endpoint in ("", "default"):
            return GCS_ENDPOINT
        return endpoint if endpoint.startswith(("http://", "https://")) else f"http://{endpoint}"

    def probe(self, url: str) -> None:
        """One small request to the endpoint of ``url`` (once per endpoint) before long work starts.

        Any HTTP answer counts as reachable; credentials are not sent.

        Raises:
            StorageUnreachableError: the host does not resolve, refuses connections or does not answer
                within ``min(request_timeout_s, 10)`` seconds.
        """
        endpoint = self.endpoint_of(url)
        if endpoint is None or endpoint in self._probed:
            return
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        timeout = min(self.io["request_timeout_s"], 10.0)
        where = f"storage endpoint {endpoint} (for {redact_url(url)})"
        fix = (
            "check the network or $BIGQUERY_EMULATOR_HOST"
            if str(url).startswith("bq://")
            else "check the network, $STORAGE_EMULATOR_HOST or data.storage.options.endpoint_url"
        )
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as err:
            raise StorageUnreachableError(f"{where}: host {host!r} does not resolve ({err}); {fix}") from None
        connection_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
        connection = connection_class(host, port, timeout=timeout)
        try:
            connection.request("HEAD", "/")
            connection.getresponse().read()
        except ConnectionRefusedError:
            raise StorageUnreachableError(f"{where}: connection refused; {fix}") from None
        except TimeoutError:
            raise StorageUnreachableError(f"{where}: no answer within {timeout:g} s; {fix}") from None
        except OSError as err:
            raise StorageUnreachableError(
                f"{where}: {type(err).__name__}: {scrub(str(err))}; {fix}"
            ) from None
        finally:
            connection.close()
        self._probed.add(endpoint)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_probed": set()}
