"""From processed ticks to the rules' observations, and from the steps of an alert's life to its store row
(contract v1's shape, with its state) and its event on the alert topic (contract v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from maskwatch.flows.batching import TickOutcome
from maskwatch.flows.lifecycle import Step
from maskwatch.flows.rules import AlertDecision, Observation, RuleConfig, parse_scope, scope_keys
from maskwatch.schemas.events import Alert, AlertEvent, Camera, RuleInfo, epoch_ms


def observations(outcome: TickOutcome, scopes: tuple[str, ...]) -> list[tuple[str, Observation]]:
    """The tick as the rules see it, once per scope it counts towards (camera, zone, site)."""
    f = outcome.frame
    people = tuple((s.person_id, s.dwell_s) for s in outcome.sightings)
    return [(key, Observation(key, f.scheduled_at, 1 if f.status == "ok" else 0, f.faces, f.nomask_faces,
                              f.tick_id, f.snapshot_path, people))
            for key in scope_keys(f.camera_id, f.site, f.zone, scopes)]


def _place(camera: Camera | None, config: RuleConfig, d: AlertDecision
           ) -> tuple[str, str, str, str, str, str]:
    """(scope kind, camera id, site, zone, rule text, what to call the place) of a decision. A zone/site
    alert is filed under the camera that saw its latest no-mask face (the schema keys alerts by camera)
    and its rule text names the scope."""
    kind, site, zone = parse_scope(d.scope)
    camera_id = d.scope if kind == "camera" else d.tick_ids[-1].split(":")[0]
    if kind == "camera" and camera is not None:
        site, zone = camera.site, camera.zone
    rule = config.describe(d.rule)
    if kind != "camera":
        rule = f"{kind} {site}{'/' + zone if zone else ''}: {rule}"
    where = camera.name if kind == "camera" and camera is not None and camera.name else camera_id
    return kind, camera_id, site, zone, rule, where


def severity(d: AlertDecision) -> Literal["warning", "critical"]:
    """critical when the rule's figure is at least twice its threshold (six people where three alert)."""
    return "critical" if d.threshold and d.value >= 2 * d.threshold else "warning"


def _message(where: str, rule: str, d: AlertDecision, step: str) -> str:
    people = f"{d.people} no-mask {'person' if d.people == 1 else 'people'}"
    seen = f"seen {d.nomask_faces} times on {d.nomask_frames}/{d.frames} frames"
    return {
        "opened": f"{where}: {rule} ({people}, {seen})",
        "updated": f"{where}: now {people} ({seen}); {rule}",
        "reopened": f"{where}: again {rule} ({people}, {seen})",
        "resolved": f"{where}: resolved, no rule held for a whole window ({rule})",
    }[step]


def to_alert(camera: Camera | None, config: RuleConfig, d: AlertDecision, step: str = "opened",
             opened_at: datetime | None = None, at: datetime | None = None) -> Alert:
    """The alert's row in the store: its figures and where its life is (``step``), filed under the time
    it opened, so every step of one alert replaces the same row."""
    _kind, camera_id, site, zone, rule, where = _place(camera, config, d)
    ratio = d.nomask_frames / d.frames if d.frames else 0.0
    opened = opened_at or d.window_end
    return Alert(
        alert_id=d.alert_id, camera_id=camera_id, site=site, zone=zone, rule=rule, triggered_at=opened,
        window_start=d.window_start, window_end=d.window_end, faces=d.faces, nomask_faces=d.nomask_faces,
        nomask_ratio=min(1.0, ratio), tick_ids=list(d.tick_ids), snapshot_path=d.snapshot_path,
        message=_message(where, rule, d, step), status="resolved" if step == "resolved" else "open",
        people=d.people, severity=severity(d), updated_at=at or d.window_end,
    )


def to_event(step: Step, camera: Camera | None, config: RuleConfig, site_timezone: str = "UTC",
             snapshot: tuple[str, datetime] | None = None) -> AlertEvent:
    """The step as it goes on the alert topic (contract v2); ``snapshot`` is a signed link and its expiry."""
    d = step.decision
    kind, camera_id, site, zone, rule, where = _place(camera, config, d)
    return AlertEvent(
        event_id=f"{d.alert_id}:{step.kind}:{epoch_ms(step.at)}", kind=step.kind, alert_id=d.alert_id,
        at=step.at, camera_id=camera_id, camera_name=camera.name if camera is not None else "", site=site,
        zone=zone, scope=kind, site_timezone=site_timezone,  # type: ignore[arg-type]
        severity=severity(d), rule=RuleInfo(kind=d.rule, description=rule,  # type: ignore[arg-type]
                                            parameters=config.parameters(d.rule)),
        window_start=d.window_start, window_end=d.window_end, people=d.people, nomask_faces=d.nomask_faces,
        faces=d.faces, frames=d.frames, value=d.value, threshold=d.threshold, tick_ids=list(d.tick_ids),
        snapshot_url=snapshot[0] if snapshot else "", snapshot_expires_at=snapshot[1] if snapshot else None,
        message=_message(where, rule, d, step.kind),
    )
