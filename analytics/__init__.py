"""Usage analytics: Athena (Trino) queries over the usage records, run locally with DuckDB (see `analytics.local`)."""

from analytics.local import (
    QueryNotFoundError,
    list_queries,
    load_query,
    query_header,
    render_query,
    run_query,
    tier_limits_from_settings,
    usage_arrow_schema,
    write_parquet,
)

__all__ = [
    "QueryNotFoundError",
    "list_queries",
    "load_query",
    "query_header",
    "render_query",
    "run_query",
    "tier_limits_from_settings",
    "usage_arrow_schema",
    "write_parquet",
]
