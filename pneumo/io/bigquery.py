"""BigQuery tables as data sources (``bq://PROJECT.DATASET.TABLE``): the client, queries and one-line errors.

``google-cloud-bigquery`` is imported only when a ``bq://`` location is used (``pip install
"pneumo[bigquery]"``; a clear error names the extra when it is missing). The client takes its credentials
and billing project from the same ``StorageSettings`` as ``gs://`` reads (``data.storage``): ``token: null``
= ``$PNEUMO_GCS_TOKEN`` or Application Default Credentials, ``anon`` = none; jobs are billed to
``data.storage.project`` (else the table's project). ``$BIGQUERY_EMULATOR_HOST`` (``http://127.0.0.1:PORT``)
points the client at an emulator, with anonymous credentials: nothing is sent to the real service.

Every failure becomes a ``BigQueryError``: one line naming the table or query and the fix (table or dataset
not found, permission denied, SQL errors with the server's message, an unreachable endpoint).

Example:
    >>> parse_table_url("bq://my-project.nih.labels").sql
    '`my-project.nih.labels`'
    >>> parse_table_url("bq://nih.labels")
    Traceback (most recent call last):
    ...
    pneumo.io.bigquery.BigQueryError: bq://nih.labels: not a BigQuery table URL; expected bq://PROJECT.DATASET.TABLE (e.g. bq://my-project.nih.labels)
    >>> check_bytes(2_000_000, 1_000_000, "the cohort query")
    Traceback (most recent call last):
    ...
    pneumo.io.bigquery.BigQueryError: the cohort query would scan 2,000,000 bytes (dry run), above data.cohort.maximum_bytes_billed=1,000,000: raise the limit or narrow the query
"""

from __future__ import annotations

import io as _io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pneumo.errors import PneumoError
from pneumo.io.storage import TOKEN_METHODS, StorageSettings, scrub

log = logging.getLogger(__name__)

SCHEME = "bq://"
#: Set by users (and the emulator fixture) to point BigQuery clients at an emulator (scheme included).
EMULATOR_HOST = "BIGQUERY_EMULATOR_HOST"
#: The real service's REST endpoint (for the reachability probe).
BIGQUERY_ENDPOINT = "https://bigquery.googleapis.com"
INSTALL = 'pip install "pneumo[bigquery]"'

_PROJECT = r"[A-Za-z0-9][A-Za-z0-9\-]*(?::[A-Za-z0-9][A-Za-z0-9\-]*)?"
_DATASET = r"[A-Za-z_][A-Za-z0-9_]*"
_TABLE = r"[A-Za-z0-9_][A-Za-z0-9_\-]*"
_URL = re.compile(rf"^bq://({_PROJECT})\.({_DATASET})\.({_TABLE})$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PERMISSION_FIX = (
    "the credentials (Application Default Credentials or $PNEUMO_GCS_TOKEN) need read access to the table "
    "(roles/bigquery.dataViewer) and may run jobs in the billing project data.storage.project "
    "(roles/bigquery.jobUser)"
)


class BigQueryError(PneumoError, ValueError):
    """A BigQuery table, query or setting that cannot be used; one line naming it and the fix."""


def is_bigquery(url: Any) -> bool:
    """Whether ``url`` names a BigQuery table (``bq://...``).

    Example:
        >>> is_bigquery("bq://p.d.t"), is_bigquery("gs://b/x.csv")
        (True, False)
    """
    return isinstance(url, str) and url.startswith(SCHEME)


@dataclass(frozen=True)
class TableRef:
    """A table's project, dataset and name."""

    project: str
    dataset: str
    table: str

    @property
    def id(self) -> str:
        """``PROJECT.DATASET.TABLE`` (what the client's calls take)."""
        return f"{self.project}.{self.dataset}.{self.table}"

    @property
    def url(self) -> str:
        return SCHEME + self.id

    @property
    def sql(self) -> str:
        """The table's name quoted for Standard SQL."""
        return f"`{self.id}`"


def parse_table_url(url: str, key: str = "") -> TableRef:
    """``bq://PROJECT.DATASET.TABLE`` as a ``TableRef``; a malformed URL is a one-line ``BigQueryError``
    (named as ``key=url`` when a config key gave it)."""
    match = _URL.match(str(url).strip())
    if not match:
        raise BigQueryError(
            f"{key + '=' if key else ''}{url}: not a BigQuery table URL; expected bq://PROJECT.DATASET.TABLE "
            "(e.g. bq://my-project.nih.labels)"
        )
    return TableRef(*match.groups())


def emulator_endpoint() -> str | None:
    """``$BIGQUERY_EMULATOR_HOST`` with a scheme (``http://`` is added when missing), or ``None``."""
    host = (os.environ.get(EMULATOR_HOST) or "").strip()
    if not host:
        return None
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def endpoint() -> str:
    """Where BigQuery requests go: the emulator when ``$BIGQUERY_EMULATOR_HOST`` is set, else the service."""
    return emulator_endpoint() or BIGQUERY_ENDPOINT


def bigquery_module() -> Any:
    """``google.cloud.bigquery``, or a ``BigQueryError`` naming the extra that installs it."""
    import importlib

    try:
        bigquery = importlib.import_module("google.cloud.bigquery")
    except ImportError:
        raise BigQueryError(
            f"bq:// locations need google-cloud-bigquery, which is not installed: {INSTALL}"
        ) from None
    return bigquery


def google_credentials(storage: StorageSettings) -> Any:
    """google-auth credentials from the storage settings (``None`` = Application Default Credentials)."""
    token = storage.credentials()
    if token == "anon":
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    if token is None or token in TOKEN_METHODS:
        return None
    if isinstance(token, str):  # a service-account key file
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_file(
            token, scopes=["https://www.googleapis.com/auth/bigquery"]
        )
    return token  # a Credentials object made from $PNEUMO_GCS_TOKEN


def describe(err: BaseException, what: str) -> BigQueryError:
    """A ``BigQueryError`` for a failure of the client while doing ``what`` (a table or query's name)."""
    from google.api_core import exceptions as gx

    if isinstance(err, BigQueryError):
        return err
    detail = server_message(err)
    if isinstance(err, (gx.Forbidden, gx.Unauthorized, gx.PermissionDenied)):
        return BigQueryError(f"{what}: permission denied ({detail}); {_PERMISSION_FIX}")
    if isinstance(err, gx.NotFound):
        return BigQueryError(f"{what}: not found ({detail})")
    if isinstance(err, gx.BadRequest):
        return BigQueryError(f"{what}: BigQuery refused it: {detail}")
    kind = f"{type(err).__module__}.{type(err).__name__}"
    if isinstance(err, (ConnectionError, TimeoutError, gx.RetryError)) or kind.startswith("requests."):
        return BigQueryError(
            f"{what}: BigQuery endpoint {endpoint()} did not answer ({type(err).__name__}); check the network "
            f"or ${EMULATOR_HOST}"
        )
    if kind.startswith("google.auth."):
        return BigQueryError(
            f"{what}: no usable credentials ({detail}); run `gcloud auth application-default login` or set "
            "$PNEUMO_GCS_TOKEN"
        )
    return BigQueryError(f"{what}: {type(err).__name__}: {detail}")


def server_message(err: BaseException) -> str:
    """The server's own message of a client error, on one line, secrets scrubbed."""
    errors = getattr(err, "errors", None) or []
    text = errors[0].get("message") if errors and isinstance(errors[0], Mapping) else None
    text = text or getattr(err, "message", None) or str(err)
    return scrub(" ".join(str(text).split()))[:400]


def check_bytes(estimate: int, limit: int | None, what: str) -> None:
    """Refuse a query whose dry-run ``estimate`` of bytes scanned is above ``limit`` (``None``: no limit)."""
    if limit is not None and estimate > limit:
        raise BigQueryError(
            f"{what} would scan {estimate:,} bytes (dry run), above data.cohort.maximum_bytes_billed="
            f"{limit:,}: raise the limit or narrow the query"
        )


def query_parameters(params: Mapping[str, Any] | None, key: str = "data.cohort.params") -> list:
    """BigQuery query parameters from a plain mapping: str, int, float, bool or lists of one of these.

    Example:
        >>> [p.to_api_repr()["parameterType"]["type"] for p in query_parameters({"view": "PA", "n": 3})]
        ['STRING', 'INT64']
    """
    bq = bigquery_module()
    out = []
    for name, value in (params or {}).items():
        if not _PARAM_NAME.match(str(name)):
            raise BigQueryError(f"{key}.{name}: not a query parameter name (letters, digits, _)")
        if isinstance(value, (list, tuple)):
            types = {_sql_type(v, f"{key}.{name}") for v in value}
            if len(types) != 1:
                raise BigQueryError(f"{key}.{name}: a list parameter needs values of one type, got {value!r}")
            out.append(bq.ArrayQueryParameter(str(name), types.pop(), list(value)))
        else:
            out.append(bq.ScalarQueryParameter(str(name), _sql_type(value, f"{key}.{name}"), value))
    return out


def _sql_type(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, str):
        return "STRING"
    raise BigQueryError(f"{key}={value!r}: a query parameter must be a string, number, boolean or a list")


class BigQuerySource:
    """A BigQuery client built from ``StorageSettings``, with one-line errors and bounded retries.

    Args:
        storage: credentials, billing project and I/O limits (``data.storage``).
        project: billing project when ``storage.project`` is not set (e.g. the table's own).

    Example:
        >>> source = BigQuerySource(StorageSettings(), project="my-project")  # doctest: +SKIP
        >>> source.read_table(parse_table_url("bq://my-project.nih.labels"))  # doctest: +SKIP
    """

    def __init__(self, storage: StorageSettings, project: str | None = None) -> None:
        self.storage = storage
        self.project = storage.project or project
        bq = bigquery_module()
        from google.api_core.retry import Retry

        emulator = emulator_endpoint()
        if emulator:
            from google.auth.credentials import AnonymousCredentials

            credentials: Any = AnonymousCredentials()  # never send real credentials to an emulator
            options: dict | None = {"api_endpoint": emulator}
        else:
            credentials, options = google_credentials(storage), None
        try:
            self.client = bq.Client(project=self.project, credentials=credentials, client_options=options)
        except Exception as err:  # noqa: BLE001 - no credentials / project: one line with the fix
            raise describe(err, "BigQuery client") from None
        # Retries of transient failures end at the storage settings' deadline (the library's is 10 min).
        self.retry = Retry(deadline=storage.io["retry_deadline_s"], timeout=storage.io["retry_deadline_s"])
        self.timeout = storage.io["request_timeout_s"]

    def table(self, ref: TableRef, what: str) -> Any:
        """The table's metadata (schema, rows, last modified); ``BigQueryError`` naming a missing table or
        dataset."""
        from google.api_core import exceptions as gx

        try:
            return self.client.get_table(ref.id, retry=self.retry, timeout=self.timeout)
        except gx.NotFound:
            try:
                self.client.get_dataset(
                    f"{ref.project}.{ref.dataset}", retry=self.retry, timeout=self.timeout
                )
            except gx.NotFound:
                raise BigQueryError(
                    f"{what}: dataset {ref.project}.{ref.dataset} not found (create it and its tables with "
                    f"`python -m pneumo.data.bigquery upload --dataset {ref.project}.{ref.dataset}`)"
                ) from None
            except Exception as err:  # noqa: BLE001 - translated to one line
                raise describe(err, what) from None
            raise BigQueryError(
                f"{what}: table {ref.id} not found in dataset {ref.project}.{ref.dataset}"
            ) from None
        except Exception as err:  # noqa: BLE001 - translated to one line
            raise describe(err, what) from None

    def read_table(
        self, ref: TableRef, what: str, columns: Sequence[str] | None = None
    ) -> tuple[pd.DataFrame, Any]:
        """All rows of a table (only ``columns`` when given, those present), and its metadata."""
        table = self.table(ref, what)
        fields = [f for f in table.schema if columns is None or f.name in columns]
        try:
            rows = self.client.list_rows(
                table, selected_fields=fields, page_size=100_000, retry=self.retry, timeout=self.timeout
            )
            data: dict[str, list] = {f.name: [] for f in fields}
            for row in rows:
                for name, value in zip(data, row.values()):
                    data[name].append(value)
        except Exception as err:  # noqa: BLE001 - translated to one line
            raise describe(err, what) from None
        return pd.DataFrame(data, columns=[f.name for f in fields]), table

    def dry_run(self, sql: str, params: Mapping | None, what: str) -> tuple[int, list[str]]:
        """Bytes the query would scan and the tables it reads (``PROJECT.DATASET.TABLE``), without running it."""
        bq = bigquery_module()
        config = bq.QueryJobConfig(
            dry_run=True, use_query_cache=False, query_parameters=query_parameters(params)
        )
        try:
            job = self.client.query(sql, job_config=config, retry=self.retry, timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - translated to one line
            raise describe(err, what) from None
        tables = [f"{t.project}.{t.dataset_id}.{t.table_id}" for t in (job.referenced_tables or [])]
        return int(job.total_bytes_processed or 0), tables

    def query(
        self, sql: str, params: Mapping | None, what: str, maximum_bytes_billed: int | None = None
    ) -> pd.DataFrame:
        """The query's result (``query(...).result()``: ``query_and_wait`` swallows some errors)."""
        bq = bigquery_module()
        config = bq.QueryJobConfig(query_parameters=query_parameters(params),
                                   maximum_bytes_billed=maximum_bytes_billed)  # fmt: skip
        try:
            result = self.client.query(sql, job_config=config, retry=self.retry, timeout=self.timeout).result(
                page_size=100_000, retry=self.retry, timeout=self.retry.deadline
            )
            names = [f.name for f in result.schema]
            return pd.DataFrame([list(row.values()) for row in result], columns=names)
        except Exception as err:  # noqa: BLE001 - translated to one line
            raise describe(err, what) from None

    def load_frame(
        self, frame: pd.DataFrame, ref: TableRef, schema: Sequence[tuple[str, str]], description: str
    ) -> int:
        """Replace table ``ref`` with ``frame`` (columns as ``schema``: ``(name, SQL type)``), described.

        A resumable upload of CSV bytes (``load_table_from_file`` with no size): multipart uploads under
        5 MiB are refused by the emulator, and CSV needs no pyarrow. Returns the rows loaded."""
        bq = bigquery_module()
        config = bq.LoadJobConfig(
            schema=[bq.SchemaField(name, kind) for name, kind in schema],
            source_format="CSV",
            skip_leading_rows=1,
            write_disposition="WRITE_TRUNCATE",
            allow_quoted_newlines=True,
        )
        data = _io.BytesIO(frame.to_csv(index=False).encode("utf-8"))
        what = f"upload to {ref.url}"
        try:
            job = self.client.load_table_from_file(data, ref.id, job_config=config, timeout=self.timeout)
            job.result(retry=self.retry, timeout=self.retry.deadline)
            table = self.client.get_table(ref.id, retry=self.retry, timeout=self.timeout)
            table.description = description
            self.client.update_table(table, ["description"], retry=self.retry, timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - translated to one line
            raise describe(err, what) from None
        return int(job.output_rows or len(frame))

    def ensure_dataset(self, project: str, dataset: str, description: str) -> None:
        """Create the dataset unless it exists."""
        bq = bigquery_module()
        ds = bq.Dataset(f"{project}.{dataset}")
        ds.description = description
        try:
            self.client.create_dataset(ds, exists_ok=True, retry=self.retry, timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - translated to one line
            raise describe(err, f"dataset {project}.{dataset}") from None
