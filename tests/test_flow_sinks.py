"""The alert-topic sink against the real broker: an alert event already on the topic is not published
again by a restarted flow (what a replay after a crash would do), new ones are, keyed by camera, as
contract v2."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from maskwatch.config import Settings
from maskwatch.flows.sinks import AlertTopicSink, published_event_ids
from maskwatch.schemas.events import AlertEvent
from maskwatch.topics import ensure_topics

from tests.flowkit import alert_event, read_topic

NOW = datetime.now(UTC).replace(microsecond=0)


def _alert(n: int, camera: str = "cam1", kind: str = "opened") -> AlertEvent:
    event: AlertEvent = alert_event(0, camera, kind, at=NOW, window_start=NOW - timedelta(seconds=60),
                                    window_end=NOW)
    return event.model_copy(update={"event_id": f"id-{n}"})


def test_restarted_sink_does_not_publish_an_alert_twice(mw_env: Settings) -> None:
    ensure_topics(mw_env)
    conf = dict(mw_env.kafka_config())
    first = AlertTopicSink(conf, mw_env.topic_alerts, horizon_s=3600).build("alerts", 0, 1)
    first.write_batch([_alert(1), _alert(2, "cam2")])
    first.write_batch([_alert(1)])  # same run, same id again
    first.close()
    assert published_event_ids(conf, mw_env.topic_alerts, 3600) == {"id-1", "id-2"}
    # A restart (new partition, empty memory) replays id-1 and brings id-3.
    second = AlertTopicSink(conf, mw_env.topic_alerts, horizon_s=3600).build("alerts", 0, 1)
    second.write_batch([_alert(1), _alert(3)])
    second.close()
    msgs = read_topic(mw_env, mw_env.topic_alerts, 3)
    ids = [json.loads(m.value())["event_id"] for m in msgs]
    assert sorted(ids) == ["id-1", "id-2", "id-3"]
    assert {(m.key(), json.loads(m.value())["camera_id"].encode()) for m in msgs} == {
        (b"cam1", b"cam1"), (b"cam2", b"cam2")}
    assert all(dict(m.headers() or [])["schema_version"] == b"2" for m in msgs)
    assert all(AlertEvent.model_validate_json(m.value()).kind == "opened" for m in msgs)
    # Outside the horizon nothing is remembered (bounded start-up read).
    assert published_event_ids(conf, mw_env.topic_alerts, 0) == set()
