"""Keep credentials out of everything a person or another system reads: logs, store, alerts, dashboard.

Three rules, applied to structured URLs (:func:`redact_url`) and to URLs inside free text
(:func:`redact_text`, the log filter):

1. userinfo: ``scheme://user:password@host`` -> ``scheme://***@host``;
2. query parameters whose name says credential (``token``, ``key``, ``sig``, ``password``, ...) -> ``***``;
3. webhook URLs of known services, whose *path* is the secret: everything after a fixed prefix is
   masked, e.g. ``https://hooks.slack.com/services/***``, ``https://discord.com/api/webhooks/***``,
   ``https://acme.webhook.office.com/webhookb2/***``.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters that commonly carry credentials on camera snapshot URLs.
_SECRET_PARAMS = {"password", "pass", "pwd", "passwd", "token", "access_token", "key", "apikey", "api_key",
                  "secret", "auth", "signature", "sig", "user", "username", "usr"}
# user:password@ inside any URL-looking text (for free text such as exception messages).
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<k>[?&](?:" + "|".join(sorted(_SECRET_PARAMS)) + r"))=(?P<v>[^&\s#'\"()<>\[\]]*)", re.IGNORECASE
)
# Webhook services whose URL path carries the token: (host, the path prefix that is kept).
_WEBHOOK_PATHS = (
    (r"hooks\.slack\.com", r"/(?:services|workflows|triggers)/"),
    (r"(?:(?:ptb|canary)\.)?discord(?:app)?\.com", r"/api/(?:v\d+/)?webhooks/"),
    (r"[a-z0-9-]+\.webhook\.office\.com", r"/webhookb2/"),
    (r"outlook\.office(?:365)?\.com", r"/webhook/"),
    (r"hooks\.zapier\.com", r"/hooks/catch/"),
)
_WEBHOOK = re.compile(
    r"(?P<keep>\bhttps?://(?:[^/\s@]*@)?(?:"
    + "|".join(f"{host}(?::\\d+)?{prefix}" for host, prefix in _WEBHOOK_PATHS)
    + r"))(?P<secret>[^\s?#'\"()<>\[\]]+)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """The URL with its user/password and secret query parameters masked; host, port and path kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*")
    url = urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))
    return _mask_webhook_paths(url)


def redact_text(text: str) -> str:
    """Mask credentials in URLs embedded anywhere in free text."""
    has_url = "://" in text  # most log lines have none: skip those rules (this runs on every line logged)
    if has_url:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['k']}={MASK}", text)
    return _mask_webhook_paths(text) if has_url else text


def _mask_webhook_paths(text: str) -> str:
    return _WEBHOOK.sub(lambda m: f"{m['keep']}{MASK}", text)
