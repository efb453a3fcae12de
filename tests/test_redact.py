"""Credentials never survive redaction, whatever text carries them."""

import logging

import pytest

from maskwatch.redact import MASK, RedactingFilter, redact_text, redact_url


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
