"""The store: every read and write of ClickHouse goes through this package.

``maskwatch.store`` is the client API (``maskwatch.store.client``), the same for a real ClickHouse server and
for the embedded one (``maskwatch.store.server``, chdb behind the ClickHouse HTTP interface)::

    from maskwatch import store
    store.migrate()
    store.insert_models("frames", frames)
    rows = store.query_rows("SELECT count() FROM frames")
"""

from maskwatch.store.client import (
    EVENT_TABLES,
    SQL_DIR,
    TTL_DEFAULTS,
    StoreError,
    client,
    close_clients,
    command,
    database_name,
    insert_models,
    insert_rows,
    migrate,
    migrations,
    query_df,
    query_rows,
    render_sql,
    ttl_days,
)

__all__ = [
    "EVENT_TABLES",
    "SQL_DIR",
    "TTL_DEFAULTS",
    "StoreError",
    "client",
    "close_clients",
    "command",
    "database_name",
    "insert_models",
    "insert_rows",
    "migrate",
    "migrations",
    "query_df",
    "query_rows",
    "render_sql",
    "ttl_days",
]
