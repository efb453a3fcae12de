"""Keep credentials out of everything a person or another system reads: logs, store, alerts, dashboard.

One set of rules for URLs (:func:`redact_url`) and for free text (:func:`redact_text`: error messages, log
lines, answers of cameras and webhooks), applied to the text as it is, so a URL keeps its shape:

1. userinfo: ``scheme://user:password@host`` -> ``scheme://***@host``, also when the password holds
   ``/``, ``?`` or ``#`` (which a URL parser reads as the start of the path, query or fragment);
2. parameters whose *name* says credential, in a query, a fragment or a ``;`` parameter list
   (``?token=``, ``#access_token=``, ``;password=``, ``X-Amz-Signature=``, ``client_secret=``,
   ``sasl.password=``) and as ``name=value`` / ``name: value`` / ``"name": "value"`` in free text;
3. credentials in HTTP headers quoted in text: ``Authorization: Basic ...`` / ``Bearer ...``, ``Cookie:``;
4. paths that carry a secret: the path after the prefix of known webhook services
   (``https://hooks.slack.com/services/***``, Discord, Teams/Office, Zapier, Telegram bot tokens) and the
   segment after ``/token/``, ``/key/``, ``/secret/``, ... anywhere.

What a credential-looking name is: one that ends in a credential word (``password``, ``pass``, ``pwd``,
``pw``, ``secret``, ``token``, ``key``, ``signature``, ``sig``, ``auth``, ``credential``, ``session``,
``cookie``, ``user``, ...), the word starting the name or following ``-``, ``_`` or ``.``, or one of the
run-together forms (``authtoken``, ``apikey``, ``accesstoken``, ...). Over-masking a harmless value is the
price of never showing a real one.
"""

from __future__ import annotations

import re

MASK = "***"

_WORDS = ("password", "passwd", "passphrase", "pass", "pwd", "pw", "secret", "token", "key", "signature",
          "sig", "auth", "credential", "credentials", "session", "sessionid", "sid", "jwt", "cookie",
          "user", "username", "usr", "login")
_COMPOUNDS = ("authtoken", "accesstoken", "apikey", "apitoken", "clientsecret", "refreshtoken", "idtoken",
              "privatekey", "secretkey", "accesskey", "authkey", "sessiontoken", "xauthtoken")
# A parameter name that ends in a credential word, the word at the start or after a separator.
_NAME = (r"(?:[A-Za-z0-9]*[._-])*(?:" + "|".join(_WORDS + _COMPOUNDS) + r")")
# In a URL: ?name=, &name=, ;name=, #name= (OAuth's implicit flow puts tokens in the fragment).
_URL_PARAM = re.compile(r"(?P<k>[?&;#]" + _NAME + r")=(?P<v>[^&;#\s'\"<>()\[\]]*)", re.IGNORECASE)
# In free text: name=value, name: value, "name": "value" (log lines, config dumps, JSON bodies).
_TEXT_PARAM = re.compile(
    r"(?<![\w.-])(?P<k>" + _NAME + r")(?P<q>[\"']?)(?P<sep>\s*[=:]\s*)"
    r"(?P<v>\"[^\"]*\"|'[^']*'|[^\s,;&'\"<>()\[\]{}]+)",
    re.IGNORECASE,
)
# HTTP credentials quoted in text: the scheme word is kept, the credential masked.
_HEADER = re.compile(
    r"(?P<k>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|digest|negotiate|token|"
    r"aws4-hmac-sha256)\s+)?)(?P<v>[^\s\"',;]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<k>\bbearer\s+)(?P<v>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)
_COOKIE = re.compile(r"(?P<k>\b(?:set-)?cookie\b\s*:\s*)(?P<v>[^\r\n]+)", re.IGNORECASE)
# scheme://...@ : the userinfo, whatever it holds up to the first '@'.
_AUTHORITY = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>[^\s'\"<>]*?)@")
# A path segment after a segment that names a credential.
_PATH_SECRET = re.compile(
    r"(?P<k>/(?:token|tokens|key|keys|apikey|api_key|api-key|secret|secrets|password|passwd|signature|sig|"
    r"auth|access_token)/)(?P<v>[^/\s?#'\"<>()\[\]]+)",
    re.IGNORECASE,
)
# Webhook services whose URL path carries the token: (host, the path prefix that is kept).
_WEBHOOK_PATHS = (
    (r"hooks\.slack\.com", r"/(?:services|workflows|triggers)/"),
    (r"(?:(?:ptb|canary)\.)?discord(?:app)?\.com", r"/api/(?:v\d+/)?webhooks/"),
    (r"[a-z0-9-]+\.webhook\.office\.com", r"/webhookb2/"),
    (r"outlook\.office(?:365)?\.com", r"/webhook/"),
    (r"hooks\.zapier\.com", r"/hooks/catch/"),
    (r"api\.telegram\.org", r"/(?:file/)?bot"),
)
_WEBHOOK = re.compile(
    r"(?P<keep>\bhttps?://(?:[^/\s@]*@)?(?:"
    + "|".join(f"{host}(?::\\d+)?{prefix}" for host, prefix in _WEBHOOK_PATHS)
    + r"))(?P<secret>[^\s?#'\"()<>\[\]]+)",
    re.IGNORECASE,
)


def _userinfo(match: re.Match[str]) -> str:
    rest = match["rest"]
    # A '/' with no ':' before the '@' is a path holding an '@' (``http://cam/snap?mail=a@b``), not a
    # user; anything else is taken for userinfo, also ``user:pa/ss#w?rd``.
    if "/" in rest and ":" not in rest:
        return match[0]
    return f"{match['scheme']}{MASK}@"


def _keep_key(match: re.Match[str]) -> str:
    return f"{match['k']}={MASK}"


def _keep_text_key(match: re.Match[str]) -> str:
    value = match["v"]
    quote = value[0] if value[:1] in "\"'" else ""
    return f"{match['k']}{match['q']}{match['sep']}{quote}{MASK}{quote}"


def _prefix(match: re.Match[str]) -> str:
    return f"{match['k']}{MASK}"


def redact_text(text: str) -> str:
    """Mask credentials anywhere in free text: URLs, parameters, headers, JSON."""
    if "://" in text:
        text = _AUTHORITY.sub(_userinfo, text)
        text = _WEBHOOK.sub(lambda m: f"{m['keep']}{MASK}", text)
    if "/" in text:
        text = _PATH_SECRET.sub(_prefix, text)
    text = _URL_PARAM.sub(_keep_key, text)
    text = _HEADER.sub(_prefix, text)
    text = _BEARER.sub(_prefix, text)
    text = _COOKIE.sub(_prefix, text)
    return _TEXT_PARAM.sub(_keep_text_key, text)


def redact_url(url: str) -> str:
    """The URL with its user/password, secret parameters and secret path parts masked; host, port and
    the rest of the path kept as they were."""
    return redact_text(url)
