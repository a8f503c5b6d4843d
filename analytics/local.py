"""The analytics queries, run locally with DuckDB over the Parquet usage records, and the local Parquet sink.

Queries
-------
`analytics/queries/<name>.sql` holds one Athena (Trino) query each, headed by ``-- name: <name>`` and one or more
``-- description: ...`` lines. They read ``usage_records``: the columns of
`runtime.observability.USAGE_RECORD_FIELDS` (``ts`` a ``timestamp`` in UTC) plus the partition columns ``year``,
``month`` and ``day`` (zero-padded strings: ``'2026'``, ``'02'``, ``'05'``).

Relations the runner provides
-----------------------------
Some queries need data that is not in the records. Each query declares it as a CTE whose body is a ``VALUES``
placeholder with example rows::

    WITH tier_limits (tier, monthly_tokens) AS (VALUES ('free', 100000), ('pro', 2000000)), ...
    WITH model_prices (model_id, input_per_1k, output_per_1k) AS (VALUES ('anthropic.claude-...', 0.00025, ...)), ...

`render_query` parses the query (sqlglot, dialect ``trino``) and replaces the rows of each such CTE, found by name,
with the given ones (column names and order stay as declared in the file), then prints it for ``trino`` (Athena)
or ``duckdb``. ``tier_limits`` is ``{tier: monthly_tokens}`` (`tier_limits_from_settings` builds it from a stack's
settings), ``model_prices`` is ``{model_id: (input_per_1k, output_per_1k)}`` in USD; either may also be an
iterable of row tuples. An empty one yields a relation without rows. On Athena by hand, edit the VALUES rows.

"This month" is ``current_date`` (UTC on Athena); ``today=`` replaces every ``current_date`` with a fixed date.

Running locally
---------------
`run_query` renders the query for DuckDB (``sqlglot.transpile(sql, read="trino", write="duckdb")``), registers
``usage_records`` as a view over ``read_parquet('<dir>/**/*.parquet', hive_partitioning=true)`` with the partition
columns read as strings (``<dir>`` is ``data_dir/usage`` when that folder exists, else ``data_dir``; no files is an
empty table), keeps only ``ts >= since`` when ``since`` is given, and returns ``(columns, rows)``.

Local sink
----------
`write_parquet` writes usage records as Parquet (pyarrow, Snappy) under
``<data_dir>/usage/year=YYYY/month=MM/day=DD/part-<uuid>.parquet``, the layout of the Firehose prefix
``usage/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/``. Locally the partition is the record's
own ``ts``; Firehose uses its arrival time, so a record from just before midnight may sit in the next day's
partition on S3. The queries therefore group by ``CAST(ts AS DATE)`` and use the partition columns only to prune.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

QUERIES_DIR = Path(__file__).resolve().parent / "queries"
USAGE_PREFIX = "usage"
PARTITION_COLUMNS = ("year", "month", "day")
# The relations a query may declare as a VALUES placeholder CTE: their columns and types.
RELATIONS = {
    "tier_limits": (("tier", "VARCHAR"), ("monthly_tokens", "BIGINT")),
    "model_prices": (("model_id", "VARCHAR"), ("input_per_1k", "DOUBLE"), ("output_per_1k", "DOUBLE")),
}

_ARROW_TYPES = {"string": "string", "int": "int32", "bigint": "int64", "boolean": "bool_", "timestamp": "timestamp"}


class QueryNotFoundError(LookupError):
    """No ``analytics/queries/<name>.sql``."""


# ------------------------------------------------------------------------------------------------------- queries


def list_queries() -> list[str]:
    """The names of the queries (file stems), sorted."""
    return sorted(p.stem for p in QUERIES_DIR.glob("*.sql"))


def load_query(name: str) -> str:
    """The Trino SQL text of query ``name``, header included. Raises `QueryNotFoundError` for an unknown name."""
    if name not in list_queries():
        raise QueryNotFoundError(f"no query {name!r}; the queries are {list_queries()}")
    return (QUERIES_DIR / f"{name}.sql").read_text(encoding="utf-8")


def query_header(name: str) -> dict[str, str]:
    """The ``-- name:`` and ``-- description:`` header of query ``name`` (description lines joined by a space)."""
    header: dict[str, list[str]] = {}
    for line in load_query(name).splitlines():
        if not line.startswith("--"):
            break
        key, sep, value = line[2:].partition(":")
        if sep:
            header.setdefault(key.strip(), []).append(value.strip())
    return {key: " ".join(values) for key, values in header.items()}


def tier_limits_from_settings(settings: Any) -> dict[str, int]:
    """``{tier name: monthlyTokens}`` from a `components.settings.StackSettings` (anything with ``.tiers``)."""
    return {tier.name: int(tier.monthly_tokens) for tier in settings.tiers}


def _rows(relation: Mapping[Any, Any] | Iterable[Any]) -> list[tuple[Any, ...]]:
    if isinstance(relation, Mapping):
        return [(key, *value) if isinstance(value, tuple | list) else (key, value) for key, value in relation.items()]
    return [tuple(row) for row in relation]


def _relation_query(name: str, rows: list[tuple[Any, ...]]) -> exp.Expr:
    columns = RELATIONS[name]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{name} rows are {tuple(c for c, _ in columns)}, got {row!r}")
    if not rows:  # VALUES needs a row: a typed, empty SELECT instead
        nulls = ", ".join(f"CAST(NULL AS {kind}) AS {column}" for column, kind in columns)
        return sqlglot.parse_one(f"SELECT {nulls} WHERE FALSE", read="trino")
    values = exp.values([tuple(exp.convert(v) for v in row) for row in rows], alias="_values")
    return exp.select("*").from_(values)


def render_query(
    name: str,
    *,
    tier_limits: Mapping[str, int] | Iterable[Any] | None = None,
    model_prices: Mapping[str, tuple[float, float]] | Iterable[Any] | None = None,
    today: date | None = None,
    dialect: str = "trino",
) -> str:
    """Query ``name`` with its placeholder relations replaced (those given; ``None`` keeps the file's rows) and
    ``current_date`` fixed to ``today`` (when given), as SQL for ``dialect`` (``trino`` for Athena, ``duckdb``)."""
    tree = sqlglot.parse_one(load_query(name), read="trino")
    given = {"tier_limits": tier_limits, "model_prices": model_prices}
    for cte in tree.find_all(exp.CTE):
        relation = given.get(cte.alias_or_name)
        if relation is not None:
            cte.set("this", _relation_query(cte.alias_or_name, _rows(relation)))
    if today is not None:
        literal = exp.cast(exp.Literal.string(today.isoformat()), exp.DataType.build("date"))
        tree = tree.transform(lambda node: literal.copy() if isinstance(node, exp.CurrentDate) else node)
    trino_sql = tree.sql(dialect="trino")
    if dialect == "trino":
        return trino_sql
    return sqlglot.transpile(trino_sql, read="trino", write=dialect)[0]


def _as_utc_naive(moment: datetime | date | str) -> datetime:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time())
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _usage_root(data_dir: Path) -> Path:
    return data_dir / USAGE_PREFIX if (data_dir / USAGE_PREFIX).is_dir() else data_dir


def run_query(
    name: str,
    data_dir: str | Path,
    *,
    since: datetime | date | str | None = None,
    tier_limits: Mapping[str, int] | Iterable[Any] | None,
    model_prices: Mapping[str, tuple[float, float]] | Iterable[Any] | None,
    today: date | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run query ``name`` with DuckDB over the Parquet usage records under ``data_dir``: ``(columns, rows)``.

    ``since`` (a datetime, a date = its midnight, or an ISO string; naive means UTC) keeps records with
    ``ts >= since``. ``tier_limits`` / ``model_prices`` replace the query's placeholder relations (``None`` keeps
    the file's example rows); ``today`` fixes ``current_date``.
    """
    import duckdb

    sql = render_query(name, tier_limits=tier_limits, model_prices=model_prices, today=today, dialect="duckdb")
    root = _usage_root(Path(data_dir))
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        if any(root.rglob("*.parquet")):
            pattern = (root / "**" / "*.parquet").as_posix().replace("'", "''")
            hive_types = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in PARTITION_COLUMNS) + "}"
            source = (
                f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true, "
                f"hive_types = {hive_types}, union_by_name = true)"
            )
        else:
            con.register("_empty_usage", _empty_table())
            source = "SELECT * FROM _empty_usage"
        if since is not None:
            source += f" WHERE ts >= TIMESTAMP '{_as_utc_naive(since).isoformat(sep=' ')}'"
        con.execute(f"CREATE VIEW usage_records AS {source}")
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description]
        return columns, [tuple(row) for row in cursor.fetchall()]
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------------- parquet


def usage_arrow_schema(*, partitions: bool = False) -> Any:
    """The pyarrow schema of a usage record (from `USAGE_RECORD_FIELDS`), optionally with the partition columns."""
    import pyarrow as pa

    from runtime.observability import USAGE_NULLABLE_FIELDS, USAGE_RECORD_FIELDS

    fields = []
    for name, kind in USAGE_RECORD_FIELDS:
        arrow_type = pa.timestamp("ms") if kind == "timestamp" else getattr(pa, _ARROW_TYPES[kind])()
        fields.append(pa.field(name, arrow_type, nullable=name in USAGE_NULLABLE_FIELDS))
    if partitions:
        fields += [pa.field(c, pa.string(), nullable=False) for c in PARTITION_COLUMNS]
    return pa.schema(fields)


def _empty_table() -> Any:
    return usage_arrow_schema(partitions=True).empty_table()


def write_parquet(records: Iterable[Mapping[str, Any] | Any], data_dir: str | Path) -> list[Path]:
    """Write usage records (dicts with the schema's columns, or `UsageRecord`) as Snappy Parquet, one new
    ``part-<uuid>.parquet`` per UTC day of ``ts`` under ``<data_dir>/usage/year=YYYY/month=MM/day=DD/``.

    Each record is checked by building a `UsageRecord` (missing fields take its defaults) and raises
    `InvalidUsageRecordError` when it breaks the contract, before anything is written. Returns the files written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from runtime.observability import USAGE_RECORD_FIELDS, InvalidUsageRecordError, UsageRecord

    known = {name for name, _ in USAGE_RECORD_FIELDS}
    by_day: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        if not isinstance(record, UsageRecord):
            unknown = set(record) - known
            if unknown:
                raise InvalidUsageRecordError(f"unknown usage record fields {sorted(unknown)}")
            record = UsageRecord(**record)
        row = record.as_dict()
        row["ts"] = datetime.strptime(row["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
        by_day.setdefault((f"{row['ts']:%Y}", f"{row['ts']:%m}", f"{row['ts']:%d}"), []).append(row)

    schema = usage_arrow_schema()
    written = []
    for (year, month, day), rows in sorted(by_day.items()):
        folder = Path(data_dir) / USAGE_PREFIX / f"year={year}" / f"month={month}" / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{uuid.uuid4()}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="snappy")
        written.append(path)
    return written
