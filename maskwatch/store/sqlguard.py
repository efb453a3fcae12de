"""What SQL the embedded store server refuses: anything that reaches the file system, the network or the
server itself.

chdb runs ClickHouse inside the server process with the rights of the user it runs as, and offers no
access control and no ``user_files_path`` it enforces, so ``SELECT * FROM file('/etc/passwd')``, ``INSERT
INTO FUNCTION file('~/.ssh/authorized_keys')``, ``url('http://169.254.169.254/...')`` or ``remote(...)``
would do what they say. The server reads every client statement with this tokenizer and refuses it when it
names such a function, engine or clause. The tokenizer errs on the side of refusing: text it cannot place
(an unknown quoting style) is read as code, so a function name hidden there is still found.

>>> check_sql("SELECT count() FROM frames FINAL WHERE camera_id = 'file(x)'")
>>> check_sql("SELECT * FROM `file`('/etc/passwd', 'LineAsString')")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
UnsafeSql: the embedded store does not run file(): it reaches files or the network
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<comment>--[^\n]*|/\*.*?\*/)
      | (?P<string>'(?:[^'\\]|\\.|'')*')
      | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
# Table functions (and a scalar one, file()) that read or write files, URLs, other servers or programs,
# or Python objects of the server process (chdb's Python() table function). Matched by name family.
_FUNCTION_FAMILIES = re.compile(
    r"^(?:file|filecluster|url|urlcluster|s3|s3cluster|s3queue|gcs|oss|cosn|azure\w*|hdfs\w*|remote\w*|"
    r"cluster\w*|mysql\w*|postgres\w*|mongo\w*|redis|sqlite|odbc|jdbc|executable\w*|python|pandas|"
    r"arrowflight\w*|iceberg\w*|delta\w*|hudi\w*|paimon\w*|ytsaurus|hive|dictionary|loop|merge|"
    r"filesystem\w*)$"
)
# Table engines with the same reach (ENGINE = File(...), URL, S3, MySQL, Kafka, Distributed, ...).
_ENGINES = re.compile(
    r"^(?:file|url|s3\w*|hdfs|mysql|materializedmysql|postgresql|materializedpostgresql|mongodb|redis|"
    r"sqlite|odbc|jdbc|executable\w*|kafka|rabbitmq|nats|azure\w*|distributed|dictionary|iceberg\w*|"
    r"deltalake\w*|hudi|hive|embeddedrocksdb|filelog|python|merge|buffer|keepermap)$"
)
# Statements that act on the server, its disks or its users rather than on data.
_STATEMENTS = frozenset({"system", "backup", "restore", "attach", "detach", "kill", "grant", "revoke",
                         "install", "undrop"})
# Settings a client may not set in its SQL: the server's limits for readers.
_PROTECTED_SETTINGS = frozenset({"readonly", "max_execution_time", "timeout_overflow_mode",
                                 "max_execution_time_leaf", "allow_ddl", "allow_introspection_functions"})


class UnsafeSql(ValueError):
    """A statement the embedded store will not run; the message says what it names."""


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "a": "\a", "v": "\v",
            "e": "\x1b", "\\": "\\", "'": "'", '"': '"', "`": "`"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)


def unquote(text: str) -> str:
    """A quoted identifier or string as ClickHouse reads it: a quote doubled inside is one, and backslash
    escapes are decoded (```fil\\x65``` names file(), so a check that did not decode would be bypassed);
    an escape ClickHouse does not know stays as written, as it does there."""
    body = text[1:-1].replace(text[0] * 2, text[0])

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x" and len(code) == 3:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, match.group(0))

    return _ESCAPE.sub(one, body)


def words(sql: str) -> Iterator[str]:
    """Identifiers and single characters of ``sql``, lowercased; strings, comments and space dropped.
    A quoted identifier counts as the name ClickHouse reads (```file`(...)`` calls file())."""
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        text = match.group()
        if kind in ("space", "comment", "string"):
            continue
        yield (unquote(text) if kind == "quoted" else text).lower()


def strings(sql: str) -> Iterator[str]:
    """The string literals of ``sql`` as ClickHouse reads them, lowercased."""
    for match in _TOKEN.finditer(sql):
        if match.lastgroup == "string":
            yield unquote(match.group()).lower()


def check_sql(sql: str) -> None:
    """Raise :class:`UnsafeSql` when ``sql`` reaches outside the store's own tables."""
    tokens = list(words(sql))
    for i, word in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if after == "(" and _FUNCTION_FAMILIES.match(word):
            raise UnsafeSql(f"the embedded store does not run {word}(): it reaches files or the network")
        if (word == "into" and after == "outfile") or (word == "from" and after == "infile"):
            raise UnsafeSql(f"the embedded store does not run {word.upper()} {after.upper()}")
        if word == "engine" and after == "=" and i + 2 < len(tokens) and _ENGINES.match(tokens[i + 2]):
            raise UnsafeSql(f"the embedded store does not create {tokens[i + 2]} tables")
        if word == "dictionary" and i > 0 and tokens[i - 1] in ("create", "replace"):
            raise UnsafeSql("the embedded store does not create dictionaries (their sources reach out)")
        if word in _PROTECTED_SETTINGS and after == "=":
            raise UnsafeSql(f"the setting {word} is the server's to set")
    first = first_word(tokens)
    if first in _STATEMENTS:
        raise UnsafeSql(f"the embedded store does not run {first.upper()} statements")


READ_STATEMENTS = frozenset({"select", "with", "show", "describe", "desc", "exists", "explain"})


def first_word(tokens: list[str]) -> str:
    """The statement's keyword, from its ``words`` ('' for none)."""
    return next((w for w in tokens if w not in ("(", ";")), "")


def is_read(sql: str) -> bool:
    """True for statements that only read (SELECT, WITH, SHOW, DESCRIBE, EXISTS, EXPLAIN)."""
    return first_word(list(words(sql))) in READ_STATEMENTS
