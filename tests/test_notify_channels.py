"""The notifier's channels against real local servers and the real broker: a Teams Workflows receiver
that checks the Adaptive Card, a Telegram Bot API stand-in (sendMessage, and sendPhoto with the
snapshot), a real SMTP server with STARTTLS (aiosmtpd, certificate from a throwaway CA) and a generic
receiver that verifies the HMAC signature. Telegram's and Teams' own servers cannot be reached from here;
these receivers check what those APIs document."""

from __future__ import annotations

import email
import email.policy
import json
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from maskwatch.config import Settings
from maskwatch.notify.signing import SIGNATURE, TIMESTAMP, verify
from maskwatch.ports import free_port
from maskwatch.schemas.events import Alert, AlertEvent
from maskwatch.schemas.parse import parse_event
from maskwatch.snapshots.links import check, make_link
from maskwatch.topics import ensure_topics

from tests.test_notify import (
    Hooks,
    Running,
    adaptive_card,
    alert_record,
    dead_letters,
    make_alert,
    notifier,
    produce,
)

pytestmark = pytest.mark.without_models

HMAC_SECRET = "whsec-test-0123456789"
LINK_KEY = "link-key-for-tests"
BOT = "123456:ABC-bot-token-SECRET"


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def settings(mw_env: Settings) -> Settings:
    ensure_topics(mw_env)
    return mw_env


@pytest.fixture
def snapshot(settings: Settings, dataset_dir: Path) -> Path:
    path = settings.home / "snapshots" / "cam-1" / "20261126" / "cam-1_1795683600000.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((dataset_dir / "images" / "maksssksksss0.jpg").read_bytes())
    return path


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKWATCH_SNAPSHOT_LINK_BASE", "https://snapshots.example.com")
    monkeypatch.setenv("MASKWATCH_SNAPSHOT_LINK_KEY", LINK_KEY)


def with_snapshot(alert: AlertEvent, path: Path) -> AlertEvent:
    """The event as the flow publishes it when links are set up: a signed link, no host path."""
    made = make_link("https://snapshots.example.com", path.parents[2], str(path), LINK_KEY.encode(), 3600)
    assert made is not None
    return alert.model_copy(update={"snapshot_url": made[0], "snapshot_expires_at": made[1]})


def test_teams_gets_an_adaptive_card_with_a_signed_snapshot_link(settings: Settings, hooks: Hooks,
                                                                 tmp_path: Path, snapshot: Path,
                                                                 links: None) -> None:
    alert = with_snapshot(make_alert(), snapshot)
    produce(settings, [alert_record(alert)])
    with Running(notifier(settings, tmp_path, [{"name": "teams", "url": f"{hooks.base}/teams",
                                               "format": "teams"}])) as running:
        running.wait(lambda s: s.posted == 1)
    card = adaptive_card(hooks.received("/teams")[0].body)
    [image] = [e for e in card["body"] if e["type"] == "Image"]
    assert image["url"] == card["actions"][0]["url"]
    link, query = image["url"].split("?")
    assert link == "https://snapshots.example.com/s/cam-1/20261126/cam-1_1795683600000.jpg"
    params = dict(p.split("=", 1) for p in query.split("&"))
    relative = "cam-1/20261126/cam-1_1795683600000.jpg"
    assert check(relative, params["exp"], params["sig"], LINK_KEY.encode()) == ""


def test_telegram_posts_the_snapshot_itself_or_plain_text(settings: Settings, hooks: Hooks, tmp_path: Path,
                                                          snapshot: Path, links: None) -> None:
    with_picture = with_snapshot(make_alert(), snapshot)
    without = make_alert(1).model_copy(update={"message": "<b>bold</b> *not* [a](https://evil.example)"})
    produce(settings, [alert_record(with_picture), alert_record(without)])
    destination = {"name": "guards", "url": f"{hooks.base}/bot{BOT}/sendMessage", "format": "telegram",
                   "chat_id": "-1001234567890"}
    with Running(notifier(settings, tmp_path, [destination])) as running:
        running.wait(lambda s: s.posted == 2)
    [photo] = hooks.received(f"/bot{BOT}/sendPhoto")
    assert photo.headers["Content-Type"].startswith("multipart/form-data")
    parts = _multipart(photo)
    assert parts["chat_id"] == b"-1001234567890" and parts["photo"] == snapshot.read_bytes()
    assert b"No-mask alert: hq / lobby / Lobby door" in parts["caption"] and len(parts["caption"]) <= 1024 * 4
    [text] = hooks.received(f"/bot{BOT}/sendMessage")
    assert text.body["chat_id"] == "-1001234567890" and "parse_mode" not in text.body  # plain text
    assert "<b>bold</b> *not* [a](https://evil.example)" in text.body["text"]  # shown as typed


def _multipart(post: Any) -> dict[str, bytes]:
    parsed = email.message_from_bytes(
        f"Content-Type: {post.headers['Content-Type']}\r\n\r\n".encode() + post.raw, policy=email.policy.HTTP)
    return {str(part.get_param("name", header="content-disposition")): bytes(part.get_payload(decode=True))
            for part in parsed.iter_parts()}


def test_generic_webhooks_are_signed(settings: Settings, hooks: Hooks, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_SECRET", HMAC_SECRET)
    alert = make_alert()
    produce(settings, [alert_record(alert)])
    with Running(notifier(settings, tmp_path, [{"name": "audit", "url": f"{hooks.base}/audit",
                                               "hmac_secret_env": "AUDIT_SECRET"}])) as running:
        running.wait(lambda s: s.posted == 1)
    [post] = hooks.received("/audit")
    assert post.headers[SIGNATURE].startswith("v1=") and post.headers[TIMESTAMP].isdigit()
    assert verify(HMAC_SECRET.encode(), post.headers, post.raw)
    assert parse_event(AlertEvent, post.raw) == alert
    assert not verify(b"another secret", post.headers, post.raw)
    assert not verify(HMAC_SECRET.encode(), post.headers, post.raw.replace(b"cam-1", b"cam-2"))
    stale = {**post.headers, TIMESTAMP: str(int(post.headers[TIMESTAMP]) - 3600)}
    assert not verify(HMAC_SECRET.encode(), stale, post.raw)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.original_content or b"",
                                                      policy=email.policy.default))
        return "250 Message accepted for delivery"


def _authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
                 ) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"maskwatch" and data.password == b"smtp-pw"
    return AuthResult(success=ok, handled=False)  # aiosmtpd then answers 235 or 535 itself


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[tuple[Inbox, int, Path]]:
    """A real SMTP server on loopback that insists on STARTTLS and on a login over it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context,
                            require_starttls=True, authenticator=_authenticate, auth_require_tls=True)
    controller.start()
    try:
        yield inbox, port, ca_file
    finally:
        controller.stop()


def _mail(port: int, ca_file: Path | None, **extra: Any) -> dict[str, Any]:
    smtp: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": "starttls",
                            "username": "maskwatch",
                            "password_env": "TEST_SMTP_PASSWORD", "sender": "maskwatch@example.com",
                            "to": ["managers@example.com", "guard@example.com"], **extra}
    if ca_file is not None:
        smtp["ca_file"] = str(ca_file)
    return {"name": "mail", "format": "email", "smtp": smtp}


def test_email_over_starttls_with_the_snapshot_attached(settings: Settings, tmp_path: Path,
                                                        snapshot: Path, smtp_server: tuple[Inbox, int, Path],
                                                        monkeypatch: pytest.MonkeyPatch, links: None) -> None:
    inbox, port, ca_file = smtp_server
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "smtp-pw")
    alert = with_snapshot(make_alert(), snapshot).model_copy(update={"message": "line one\r\nBcc: x@evil"})
    produce(settings, [alert_record(alert)])
    with Running(notifier(settings, tmp_path, [_mail(port, ca_file)])) as running:
        running.wait(lambda s: s.posted == 1)
    [message] = inbox.messages
    assert inbox.envelopes[0].rcpt_tos == ["managers@example.com", "guard@example.com"]
    assert message["Subject"].startswith("No-mask alert: hq / lobby / Lobby door")
    assert message["X-Maskwatch-Alert-Id"] == alert.alert_id and message["Bcc"] is None
    [picture] = list(message.iter_attachments())
    assert picture.get_content_type() == "image/jpeg" and picture.get_content() == snapshot.read_bytes()
    text = message.get_body(("plain",))
    assert text is not None and "3 no-mask of 5 faces" in text.get_content()
    assert "Bcc: x@evil" in text.get_content()  # the camera's text stays in the body, never a header


def test_email_refuses_an_untrusted_server_and_a_wrong_password(settings: Settings, tmp_path: Path,
                                                               smtp_server: tuple[Inbox, int, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, port, ca_file = smtp_server
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "wrong")
    produce(settings, [alert_record(make_alert()), alert_record(make_alert(1))])
    # The first destination does not trust the server's CA: the certificate check fails, tried again,
    # then dead-lettered. The second trusts it but logs in with the wrong password: refused at once.
    destinations = [_mail(port, None), {**_mail(port, ca_file), "name": "mail-2"}]
    with Running(notifier(settings, tmp_path, destinations,
                          retry={"attempts": 2, "base_delay_s": 0.05, "max_delay_s": 0.1})) as running:
        stats = running.wait(lambda s: s.failed == 4)
    assert inbox.messages == [] and stats.posted == 0
    reasons = [d.error for d in dead_letters(settings, 4)]
    assert sum("CERTIFICATE_VERIFY_FAILED" in r or "SSLCertVerificationError" in r for r in reasons) == 2
    assert sum("SMTP 535" in r and "gave up after 1 tries" in r for r in reasons) == 2
    assert not any("wrong" in r for r in reasons)


def test_camera_health_reaches_every_channel_kind(settings: Settings, hooks: Hooks, tmp_path: Path,
                                                  smtp_server: tuple[Inbox, int, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_notify import health_event

    inbox, port, ca_file = smtp_server
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "smtp-pw")
    down = health_event("down", "down", "degraded", 3)
    from maskwatch import kafka

    producer = kafka.producer(settings, linger_ms=0)
    producer.produce(settings.topic_camera_health, key=b"cam-1", value=down.model_dump_json().encode())
    assert producer.flush(30) == 0
    destinations = [{"name": "teams", "url": f"{hooks.base}/teams", "format": "teams"},
                    {"name": "tg", "url": f"{hooks.base}/bot{BOT}/sendMessage", "format": "telegram",
                     "chat_id": "@site_guards"},
                    _mail(port, ca_file)]
    with Running(notifier(settings, tmp_path, destinations)) as running:
        running.wait(lambda s: s.posted == 3)
    card = adaptive_card(hooks.received("/teams")[0].body)
    assert card["body"][0]["text"].startswith("Camera down: hq / Front &lt;door&gt;")
    assert hooks.received(f"/bot{BOT}/sendMessage")[0].body["chat_id"] == "@site_guards"
    assert inbox.messages[0]["Subject"].startswith("Camera down: hq / Front <door>")
    assert json.dumps(hooks.received(f"/bot{BOT}/sendMessage")[0].body).count("Camera down") == 1


def test_each_step_of_an_alerts_life_once_and_version_1_alerts_still(settings: Settings, hooks: Hooks,
                                                                     tmp_path: Path, snapshot: Path,
                                                                     links: None) -> None:
    from tests.flowkit import alert_event

    life = [alert_event(0, kind=k, people=p) for k, p in (("opened", 3), ("updated", 5), ("resolved", 5),
                                                          ("acknowledged", 5))]
    life[3] = life[3].model_copy(update={"acknowledged_by": "Dana", "note": "spoke to the staff"})
    v1 = Alert(alert_id="old-1", camera_id="cam-2", rule=">=3 no-mask faces in 60s",
               triggered_at=life[0].at, window_start=life[0].window_start, window_end=life[0].window_end,
               faces=4, nomask_faces=3, nomask_ratio=0.5, snapshot_path=str(snapshot))
    produce(settings, [alert_record(e) for e in life] + [alert_record(life[1])] + [alert_record(v1)])
    destinations: list[dict[str, Any]] = [{"name": "chat", "url": f"{hooks.base}/chat", "format": "slack"},
                                          {"name": "audit", "url": f"{hooks.base}/audit", "format": "generic",
                                           "alert_events": ["opened", "updated", "resolved", "acknowledged",
                                                            "reopened"]}]
    with Running(notifier(settings, tmp_path, destinations)) as running:
        stats = running.wait(lambda s: s.posted == 4 + 5)
    assert stats.duplicates == 1  # the "updated" published twice is posted once
    # Chat gets the life without the noisy "more people" step; the audit log all of it.
    chat = [p.body["text"] for p in hooks.received("/chat")]
    assert [t.split(" at ")[0].split(":")[0] for t in chat] == ["No-mask alert", "Resolved",
                                                               "Acknowledged by Dana", "No-mask alert"]
    audit = [parse_event(AlertEvent, json.dumps(p.body)) for p in hooks.received("/audit")]
    assert [e.kind for e in audit] == ["opened", "updated", "resolved", "acknowledged", "opened"]
    assert len({e.alert_id for e in audit[:4]}) == 1
    # A version 1 alert (still on the topic from before the upgrade) arrives as its opened event, its
    # snapshot as a signed link: never its host path.
    old = audit[4]
    assert old.alert_id == "old-1" and old.snapshot_url.startswith("https://snapshots.example.com/s/cam-1/")
    assert str(snapshot.parent) not in json.dumps(hooks.received("/audit")[4].body)
