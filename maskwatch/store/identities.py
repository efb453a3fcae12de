"""Who may do what in the store: the dashboard's read-mostly identity.

The flow, the ticker, the notifier and the migrator use the store's own user. The dashboard uses
``maskwatch_dashboard``: it reads the tables it shows, writes acknowledgements and camera and site edits,
and can neither change the schema nor read a camera's source URL (credentials live in
``camera_sources``, which it may write, when an operator types a new source, but not read).

The same rules hold in both stores:

- a ClickHouse server gets the user and its grants from :func:`grant_statements` (``maskwatch store
  grant-dashboard``, run by the migrate job of ``docker/`` and ``docker/k8s/``);
- the embedded store server (chdb has no users) serves that user name with the password of
  ``MASKWATCH_STORE_DASHBOARD_PASSWORD(_FILE)`` and holds each of its statements to
  :func:`check_dashboard_sql`.

The tests run the embedded side for real; the grants they can only parse, with ClickHouse's own parser
(in chdb): no ClickHouse server installs here, and chdb has no users.

>>> check_dashboard_sql("SELECT count() FROM frames FINAL")
>>> check_dashboard_sql("SELECT source_url FROM camera_sources")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
UnsafeSql: the dashboard's store user cannot read camera_sources
"""

from __future__ import annotations

from maskwatch.config import DASHBOARD_STORE_USER as DASHBOARD_USER
from maskwatch.store.sqlguard import READ_STATEMENTS, UnsafeSql, first_word, strings, words

__all__ = ["DASHBOARD_USER", "check_dashboard_sql", "grant_statements"]
# Every table and view the dashboard shows. A new table is not readable until it is listed here
# (tests/test_store_identities.py fails on a table that is in no list).
DASHBOARD_READS = (
    "frames", "detections", "current_detections", "alerts", "alert_events", "alert_acks", "camera_health",
    "camera_health_events", "sites", "compliance_hourly", "compliance_daily",
)
# The registry without sources (the column is blank since migration 010; the grant leaves it out anyway).
DASHBOARD_CAMERA_COLUMNS = (
    "id", "name", "site", "zone", "display_url", "interval_s", "enabled", "rules", "area", "schedule",
    "allow_private_network", "updated_at", "deleted",
)
DASHBOARD_WRITES = ("alert_acks", "alert_events", "cameras", "camera_sources", "sites")
# Never readable by the dashboard: credentials, and the migrator's own record. (The rollups' feeding
# materialised views are the migrator's too.)
NOT_READ = ("camera_sources", "schema_migrations", "compliance_hourly_frames", "compliance_hourly_people",
            "compliance_daily_frames", "compliance_daily_people")
_SECRET_WORDS = frozenset({"camera_sources", "source_url"})


def grant_statements(database: str, password: str, user: str = DASHBOARD_USER) -> list[str]:
    """ClickHouse SQL that creates (or updates) the dashboard's user with exactly its rights; safe to run
    again (it revokes what it granted before, so a table dropped from the lists loses its grant)."""
    db = f"`{database}`"
    secret = password.replace("\\", "\\\\").replace("'", "\\'")
    statements = [
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_password BY '{secret}'",
        f"ALTER USER {user} IDENTIFIED WITH sha256_password BY '{secret}'",
        f"REVOKE ALL ON *.* FROM {user}",
    ]
    statements += [f"GRANT SELECT ON {db}.{table} TO {user}" for table in DASHBOARD_READS]
    statements.append(f"GRANT SELECT({', '.join(DASHBOARD_CAMERA_COLUMNS)}) ON {db}.cameras TO {user}")
    statements += [f"GRANT INSERT ON {db}.{table} TO {user}" for table in DASHBOARD_WRITES]
    return statements


def check_dashboard_sql(sql: str) -> None:
    """Raise :class:`UnsafeSql` unless ``sql`` is one the dashboard's identity may run: a read that names
    no source, or a plain data insert into one of ``DASHBOARD_WRITES``."""
    tokens = list(words(sql))
    first = first_word(tokens)
    if first in ("describe", "desc") and _described(tokens) in DASHBOARD_WRITES:
        return  # a client's insert asks for the table's columns first; names and types are no secret
    if first in READ_STATEMENTS:
        # Also in strings: table functions name tables by string (mergeTreeIndex(db, 'camera_sources')).
        texts = list(strings(sql))
        named = sorted(_SECRET_WORDS.intersection(tokens)
                       | {w for w in _SECRET_WORDS if any(w in text for text in texts)})
        if named:
            raise UnsafeSql(f"the dashboard's store user cannot read {', '.join(named)}")
        return
    if first == "insert":
        table = _insert_target(tokens)
        if table in DASHBOARD_WRITES and "select" not in tokens and "with" not in tokens:
            return
        raise UnsafeSql("the dashboard's store user may insert rows only into "
                        + ", ".join(DASHBOARD_WRITES) + " (data, not a SELECT)")
    raise UnsafeSql(f"the dashboard's store user may read, and write acknowledgements and camera and site "
                    f"edits; not run {first.upper() or 'this'} statements")


def _described(tokens: list[str]) -> str:
    """The table of ``DESCRIBE [TABLE] [db.]table`` and nothing more ('' otherwise)."""
    rest = [t for t in tokens[1:] if t != ";"]
    if "format" in rest:  # clients add the answer's format
        rest = rest[:rest.index("format")]
    if rest[:1] == ["table"]:
        rest = rest[1:]
    if len(rest) == 3 and rest[1] == ".":
        return rest[2]
    return rest[0] if len(rest) == 1 else ""


def _insert_target(tokens: list[str]) -> str:
    """The table of ``INSERT INTO [db.]table ...`` ('' for anything else, e.g. INSERT INTO FUNCTION)."""
    start = tokens.index("insert")
    rest = tokens[start + 1:]
    if len(rest) < 2 or rest[0] != "into":
        return ""
    if len(rest) >= 4 and rest[2] == ".":
        return rest[3]
    return rest[1]
