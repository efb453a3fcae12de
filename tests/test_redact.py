"""Credentials never survive redaction, whatever text carries them."""

import logging
import subprocess
import sys

import pytest

from maskwatch.logs import RedactingFilter
from maskwatch.schemas.redaction import MASK, redact_text, redact_url

pytestmark = pytest.mark.without_models


def test_userinfo_and_secret_params_masked_host_kept() -> None:
    url = "rtsp://admin:s3cret@10.0.0.7:554/stream?token=abc&channel=2"
    out = redact_url(url)
    assert "s3cret" not in out and "admin" not in out and "abc" not in out
    assert "10.0.0.7:554/stream" in out and "channel=2" in out


def test_free_text_keeps_surrounding_punctuation() -> None:
    text = "fetch failed (http://u:pw@cam.local/snap.jpg?password=hunter2) after 3 tries"
    out = redact_text(text)
    assert "pw@" not in out and "hunter2" not in out
    assert out.endswith(f"?password={MASK}) after 3 tries")


def test_logging_filter_redacts_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("maskwatch.test.redact")
    handler_filter = RedactingFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        try:
            raise RuntimeError("cannot open rtsp://bob:topsecret@cam/1")
        except RuntimeError:
            logger.exception("camera %s down", "http://alice:pa55@cam2/x.jpg")
    finally:
        caplog.handler.removeFilter(handler_filter)
    text = caplog.text
    assert "topsecret" not in text and "pa55" not in text
    assert "cam2/x.jpg" in text


WEBHOOKS = [
    ("https://hooks.slack.com/services/T0AAA/B0BBB/xoxSECRET42", "https://hooks.slack.com/services/***"),
    ("https://hooks.slack.com/workflows/T0AAA/A0CCC/1234/SECRET42", "https://hooks.slack.com/workflows/***"),
    ("https://discord.com/api/webhooks/1234567/SECRET42-tok", "https://discord.com/api/webhooks/***"),
    ("https://discordapp.com/api/v10/webhooks/1/SECRET42", "https://discordapp.com/api/v10/webhooks/***"),
    ("https://acme.webhook.office.com/webhookb2/a1b2@c3d4/IncomingWebhook/SECRET42/e5f6",
     "https://acme.webhook.office.com/webhookb2/***"),
    ("https://outlook.office.com/webhook/SECRET42/IncomingWebhook/x", "https://outlook.office.com/webhook/***"),
    ("https://hooks.zapier.com/hooks/catch/123/SECRET42/", "https://hooks.zapier.com/hooks/catch/***"),
    ("https://prod-1.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke"
     "?api-version=2016-06-01&sp=run&sig=SECRET42",
     "https://prod-1.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke"
     "?api-version=2016-06-01&sp=run&sig=***"),
    ("https://chat.googleapis.com/v1/spaces/AAA/messages?key=SECRET42&token=SECRET42",
     "https://chat.googleapis.com/v1/spaces/AAA/messages?key=***&token=***"),
    ("https://bot:SECRET42@hooks.example.com/alerts?channel=ops", "https://***@hooks.example.com/alerts?channel=ops"),
]


@pytest.mark.parametrize(("url", "masked"), WEBHOOKS)
def test_webhook_urls_masked_by_url_and_text_rules_alike(url: str, masked: str) -> None:
    assert redact_url(url) == masked
    assert redact_text(f"POST to {url} failed: HTTP 500") == f"POST to {masked} failed: HTTP 500"


def test_other_hosts_keep_their_paths() -> None:
    # The path rule is for the listed webhook services only: a camera's snapshot path is not a secret.
    for url in ("https://cams.example.com/services/T0/B0/snap.jpg", "http://10.0.0.7/api/webhooks/1/2"):
        assert redact_url(url) == url and redact_text(url) == url


def test_real_logging_setup_masks_every_rule() -> None:
    """The log filter as the CLI installs it (``setup_logging``), in a process of its own."""
    urls = [url for url, _ in WEBHOOKS] + ["rtsp://admin:SECRET42@10.0.0.7/live?password=SECRET42"]
    script = (
        "import logging, sys\n"
        "from maskwatch.logs import setup_logging\n"
        "setup_logging('INFO')\n"
        "log = logging.getLogger('maskwatch.notify.service')\n"
        "for url in sys.argv[1:]:\n"
        "    log.warning('delivery to %s failed', url)\n"
        "try:\n"
        "    raise ConnectionError(f'cannot reach {sys.argv[1]}')\n"
        "except ConnectionError:\n"
        "    log.exception('giving up')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *urls], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    logged = result.stderr
    assert logged.count("delivery to") == len(urls) and "ConnectionError: cannot reach" in logged
    assert "SECRET42" not in logged
    for _, masked in WEBHOOKS:
        assert masked in logged


# (text, secret that must not survive, text that must survive)
FAMILY = [
    ("https://b.s3.amazonaws.com/x.jpg?X-Amz-Credential=AKIAX&X-Amz-Signature=SECRET42&X-Amz-Expires=60",
     "SECRET42", "X-Amz-Expires=60"),
    ("https://storage.googleapis.com/b/x.jpg?X-Goog-Signature=SECRET42&X-Goog-Date=2026", "SECRET42",
     "X-Goog-Date=2026"),
    ("http://cam/snap.jpg?access-token=SECRET42&ch=1", "SECRET42", "ch=1"),
    ("http://cam/snap.jpg?authtoken=SECRET42", "SECRET42", "http://cam/snap.jpg"),
    ("https://idp/cb?client_id=app&client_secret=SECRET42", "SECRET42", "client_id=app"),
    ("http://cam/cgi-bin/snapshot.cgi?user=admin&pw=SECRET42", "SECRET42", "snapshot.cgi"),
    ("rtsp://cam:554/live;password=SECRET42;channel=1", "SECRET42", ";channel=1"),
    ("https://app/cb#access_token=SECRET42&state=xyz", "SECRET42", "state=xyz"),
    ("https://api.example.com/v1/token/SECRET42/frames", "SECRET42", "/frames"),
    ("https://api.telegram.org/botSECRET42:AAE/sendMessage", "SECRET42", "https://api.telegram.org/bot"),
    ("rtsp://admin:pa#SECRET42@10.0.0.5/live", "SECRET42", "10.0.0.5/live"),
    ("rtsp://admin:pa/SECRET42@10.0.0.5/live", "SECRET42", "10.0.0.5/live"),
    ("rtsp://admin:pa?SECRET42@10.0.0.5/live", "SECRET42", "10.0.0.5/live"),
    ("request failed: Authorization: Basic U0VDUkVUNDI6eA== (401)", "U0VDUkVUNDI6eA", "(401)"),
    ("header Authorization: Bearer eyJSECRET42.x.y rejected", "eyJSECRET42", "rejected"),
    ("librdkafka config: sasl.mechanism=PLAIN sasl.password=SECRET42 sasl.username=svc", "SECRET42",
     "sasl.mechanism=PLAIN"),
    ("ssl.key.password=SECRET42", "SECRET42", "ssl.key.password="),
    ('{"password": "SECRET42", "camera": "door"}', "SECRET42", '"camera": "door"'),
    ("Set-Cookie: session=SECRET42; Path=/", "SECRET42", "Set-Cookie:"),
    ("api_key: SECRET42", "SECRET42", "api_key:"),
    ("X-Api-Key=SECRET42 sent", "SECRET42", "sent"),
]


@pytest.mark.parametrize(("text", "secret", "kept"), FAMILY)
def test_the_family_of_secret_shapes_is_masked(text: str, secret: str, kept: str) -> None:
    out = redact_text(text)
    assert secret not in out and MASK in out, out
    assert kept in out, out
    assert redact_text(out) == out  # masking is stable: a second pass changes nothing


def test_ordinary_text_and_urls_pass_unchanged() -> None:
    for text in ("camera door: 3 no-mask faces in 60s", "http://10.0.0.7:8080/snap.jpg?channel=2&res=hd",
                 "bypass mode on, monkey=1", "no password set", "http://cam/snap?mail=a@b.example"):
        assert redact_text(text) == text
