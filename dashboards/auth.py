"""Dashboard login: a sign-in page in front of every page, users from ``MASKWATCH_DASHBOARD_USERS_FILE``.

The users file (YAML or JSON) maps a user name to a salted scrypt hash and a role;
``maskwatch dashboard adduser NAME --role ROLE`` writes it (password from a prompt or stdin, never the
command line)::

    users:
      alice: {hash: "scrypt$16384$8$1$<salt, base64>$<hash, base64>", role: admin}
      bob: "scrypt$..."          # no role (the older format): viewer

Roles, each including the one before: ``viewer`` reads every page; ``operator`` also acknowledges alerts
and registers, edits, disables and removes cameras, but cannot put a camera on a private network (the
SSRF opt-in, ``allow_private_network``) nor change the source of a camera that has it; ``admin`` can. A
user without a role is a viewer: least privilege unless the file says otherwise.

Without a users file the dashboard runs without login (the embedded default, bound to 127.0.0.1) and the
sidebar says so; everyone who reaches it then acts as admin, as the one local user. A shared deployment
sets the file. A session is signed out after ``MASKWATCH_DASHBOARD_SESSION_MINUTES`` (default 30)
without activity. Failed attempts lock the session's sign-in form for a while, doubling with each further
failure; hashes are compared in constant time, and a wrong user name costs the same hashing as a wrong
password, so neither timing nor messages tell which. The file is re-read on every page run: removing a
user signs them out, and a changed role applies, at their next click.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from maskwatch.config import DashboardSettings

log = logging.getLogger(__name__)

USERS_FILE_ENV = "MASKWATCH_DASHBOARD_USERS_FILE"
SESSION_MINUTES_ENV = "MASKWATCH_DASHBOARD_SESSION_MINUTES"
MIN_PASSWORD_LENGTH = 8
# Failures allowed before the form locks; then 30 s, 60 s, 120 s ... up to 15 minutes.
FREE_ATTEMPTS = 5
LOCK_BASE_S = 30.0
LOCK_MAX_S = 900.0
# scrypt: n=2^14, r=8 (16 MiB, ~50 ms a check): slow for a guesser, fine for a sign-in.
_N, _R, _P = 2**14, 8, 1
_DUMMY_HASH: str | None = None
ROLES = ("viewer", "operator", "admin")  # each may do what the ones before it may
DEFAULT_ROLE = "viewer"


class UsersFileError(ValueError):
    """The users file cannot be read or has a bad entry; the message names the file and the problem."""


@dataclass(frozen=True)
class Account:
    hash: str  # encoded scrypt hash
    role: str = DEFAULT_ROLE


@dataclass(frozen=True)
class Identity:
    """Who runs this page: ``user`` is None when login is off."""

    user: str | None
    role: str

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(base64.b64decode(expected)), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))


def users_file() -> Path | None:
    path = DashboardSettings().users_file
    return path.expanduser() if path is not None and str(path).strip() else None


def load_users(path: Path) -> dict[str, Account]:
    """User name -> account. A missing/unreadable file or a bad entry is an error, not 'no users'."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsersFileError(f"dashboard users file {path}: cannot read it ({exc})") from None
    users = document.get("users") if isinstance(document, dict) else None
    if not isinstance(users, dict):
        raise UsersFileError(f"dashboard users file {path}: expected a top-level 'users:' mapping")
    accounts: dict[str, Account] = {}
    for name, entry in users.items():
        if isinstance(entry, dict):
            encoded, role = entry.get("hash"), entry.get("role", DEFAULT_ROLE)
        else:
            encoded, role = entry, DEFAULT_ROLE
        if not isinstance(encoded, str) or not encoded.startswith("scrypt$") or encoded.count("$") != 5:
            raise UsersFileError(f"dashboard users file {path}: user {name!r} has no valid scrypt hash; "
                                 "set it with `maskwatch dashboard adduser`")
        if role not in ROLES:
            raise UsersFileError(f"dashboard users file {path}: user {name!r} has role {role!r}; "
                                 f"expected one of {', '.join(ROLES)}")
        accounts[str(name)] = Account(encoded, role)
    return accounts


def add_user(path: Path, name: str, password: str, role: str | None = None) -> bool:
    """Add or replace a user (True if new). ``role`` None keeps an existing user's role (viewer for a new
    one). Written atomically, readable by the owner only."""
    if not name or not name.isprintable() or any(c.isspace() for c in name) or len(name) > 64:
        raise UsersFileError(f"user name {name!r}: 1-64 printable characters, no spaces")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if role is not None and role not in ROLES:
        raise UsersFileError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    users = load_users(path) if path.exists() else {}
    new = name not in users
    users[name] = Account(hash_password(password), role or (DEFAULT_ROLE if new else users[name].role))
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {n: {"hash": a.hash, "role": a.role} for n, a in users.items()}
    text = ("# maskwatch dashboard users (salted scrypt hashes; roles viewer|operator|admin):\n"
            "# `maskwatch dashboard adduser NAME --role ROLE`\n"
            + yaml.safe_dump({"users": entries}, sort_keys=True))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return new


def check_credentials(users: dict[str, Account], name: str, password: str) -> bool:
    """True if the user exists and the password matches; the same work either way (no user-name oracle)."""
    global _DUMMY_HASH
    account = users.get(name)
    if account is None:
        _DUMMY_HASH = _DUMMY_HASH or hash_password(secrets.token_hex(16))
        verify_password(password, _DUMMY_HASH)
        return False
    return verify_password(password, account.hash)


def session_minutes() -> float:
    return DashboardSettings().session_minutes


def lock_seconds(failures: int) -> float:
    """How long the form stays locked after this many failures in a row (0: not locked)."""
    if failures < FREE_ATTEMPTS:
        return 0.0
    return min(LOCK_BASE_S * 2 ** (failures - FREE_ATTEMPTS), LOCK_MAX_S)


class SignInLimiter:
    """Failed sign-ins in a row per user name and per client address, for the whole dashboard process:
    a new browser session (or a script that opens one per guess) meets the same lock as the last one.

    >>> limiter = SignInLimiter(clock=lambda: 100.0)
    >>> for _ in range(FREE_ATTEMPTS):
    ...     _ = limiter.failed(["user:alice", "addr:10.0.0.9"])
    >>> limiter.locked_for(["user:alice"]) > 0, limiter.locked_for(["user:bob", "addr:10.0.0.9"]) > 0
    (True, True)
    """

    MAX_KEYS = 10_000  # kept in memory: the oldest go first when an attacker cycles through names

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (failures in a row, locked until)

    def locked_for(self, keys: list[str]) -> float:
        """Seconds until every one of ``keys`` may try again (0: now)."""
        now = self._clock()
        with self._lock:
            return max([self._failures.get(k, (0, 0.0))[1] - now for k in keys] + [0.0])

    def failed(self, keys: list[str]) -> float:
        """Count a failure against every key; returns the lock it now carries (seconds, 0 for none)."""
        now = self._clock()
        lock = 0.0
        with self._lock:
            for key in keys:
                count = self._failures.pop(key, (0, 0.0))[0] + 1
                until = now + lock_seconds(count) if lock_seconds(count) else 0.0
                self._failures[key] = (count, until)
                lock = max(lock, lock_seconds(count))
            while len(self._failures) > self.MAX_KEYS:
                self._failures.pop(next(iter(self._failures)))
        return lock

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


LIMITER = SignInLimiter()


def _limit_keys(name: str) -> list[str]:
    import streamlit as st

    keys = [f"user:{name.strip().lower()[:200]}"]
    with contextlib.suppress(Exception):  # no client address outside a served app (AppTest)
        if st.context.ip_address:
            keys.append(f"addr:{st.context.ip_address}")
    return keys


# --- Streamlit ---------------------------------------------------------------------------------------


def require_login() -> str | None:
    """Call first in the app: returns the signed-in user (None when login is off); otherwise shows only
    the sign-in page and stops the run, so no page and no data is reached without a session."""
    import streamlit as st

    path = users_file()
    if path is None:
        st.sidebar.caption(f"Login is off (no `{USERS_FILE_ENV}`): anyone who can reach this address "
                           "sees and changes everything. Set it before sharing the dashboard.")
        return None
    try:
        users = load_users(path)
        timeout_s = session_minutes() * 60
    except UsersFileError as exc:
        st.error(f"{exc}. Nobody can sign in until it is fixed.", icon=":material/lock:")
        st.stop()
    state = st.session_state
    user = state.get("auth_user")
    now = time.time()
    if user is not None:
        if user in users and now - float(state.get("auth_seen", 0)) <= timeout_s:
            # The role comes from the file on every run: a changed role counts from the next click.
            state["auth_seen"], state["auth_role"] = now, users[user].role
            st.sidebar.caption(f"Signed in as **{user}** ({users[user].role})")
            if st.sidebar.button("Sign out", key="auth_sign_out"):
                _sign_out("Signed out.")
                st.rerun()
            return str(user)
        _sign_out("Session expired: sign in again." if user in users else "Your account was removed.")
    # Only the sign-in page exists for this session: page URLs of the app lead here too.
    st.navigation([st.Page(lambda: _sign_in_page(users), title="Sign in", icon=":material/login:",
                           url_path="signin")], position="hidden").run()
    st.stop()
    return None  # not reached: st.stop() ends the run


def identity() -> Identity:
    """The user and role of this page run (after :func:`require_login`). Login off: the local user, admin
    (the embedded default's single-user behaviour); a session without a known role counts as viewer."""
    import streamlit as st

    if users_file() is None:
        return Identity(None, "admin")
    user = st.session_state.get("auth_user")
    role = st.session_state.get("auth_role")
    return Identity(str(user) if user else None, role if role in ROLES else DEFAULT_ROLE)


def _sign_out(message: str) -> None:
    import streamlit as st

    for key in ("auth_user", "auth_seen", "auth_role"):
        st.session_state.pop(key, None)
    st.session_state["auth_notice"] = message


def _sign_in_page(users: dict[str, Account]) -> None:
    import streamlit as st

    state = st.session_state
    st.title("maskwatch · sign in")
    notice = state.pop("auth_notice", None)
    if notice:
        st.info(notice)
    with st.form("sign_in", clear_on_submit=True):  # the password never stays in the page
        name = st.text_input("User name", key="auth_name")
        password = st.text_input("Password", type="password", key="auth_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    now = time.time()
    keys = _limit_keys(name)
    wait = LIMITER.locked_for(keys)
    if wait > 0:
        st.error(f"Too many failed attempts: try again in {int(wait) + 1} s.")
        return
    if check_credentials(users, name.strip(), password):
        LIMITER.succeeded(keys)
        state["auth_user"], state["auth_seen"] = name.strip(), now
        state["auth_role"] = users[name.strip()].role
        log.info("dashboard: %s signed in", ascii(name.strip()))
        st.rerun()
    lock = LIMITER.failed(keys)
    log.warning("dashboard: failed sign-in as %s", ascii(name.strip()[:80]))
    st.error("Wrong user name or password." + (f" Sign-in locked for {int(lock)} s." if lock else ""))
