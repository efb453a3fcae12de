"""From processed ticks to the rules' observations, and from the rules' decisions to alert events."""

from __future__ import annotations

from maskwatch.flows.batching import TickOutcome
from maskwatch.flows.rules import AlertDecision, Observation, RuleConfig, parse_scope, scope_keys
from maskwatch.schemas.events import Alert, Camera


def observations(outcome: TickOutcome, scopes: tuple[str, ...]) -> list[tuple[str, Observation]]:
    """The tick as the rules see it, once per scope it counts towards (camera, zone, site)."""
    f = outcome.frame
    people = tuple((s.person_id, s.dwell_s) for s in outcome.sightings)
    return [(key, Observation(key, f.scheduled_at, 1 if f.status == "ok" else 0, f.faces, f.nomask_faces,
                              f.tick_id, f.snapshot_path, people))
            for key in scope_keys(f.camera_id, f.site, f.zone, scopes)]


def to_alert(camera: Camera | None, config: RuleConfig, d: AlertDecision) -> Alert:
    """The alert event. A zone/site alert is filed under the camera that saw its latest no-mask face
    (the schema keys alerts by camera) and its rule text names the scope."""
    kind, site, zone = parse_scope(d.scope)
    camera_id = d.scope if kind == "camera" else d.tick_ids[-1].split(":")[0]
    if kind == "camera" and camera is not None:
        site, zone = camera.site, camera.zone
    rule = config.describe(d.rule)
    if kind != "camera":
        rule = f"{kind} {site}{'/' + zone if zone else ''}: {rule}"
    where = camera.name if kind == "camera" and camera is not None and camera.name else camera_id
    ratio = d.nomask_frames / d.frames if d.frames else 0.0
    return Alert(
        alert_id=d.alert_id, camera_id=camera_id, site=site, zone=zone, rule=rule, triggered_at=d.window_end,
        window_start=d.window_start, window_end=d.window_end, faces=d.faces, nomask_faces=d.nomask_faces,
        nomask_ratio=min(1.0, ratio), tick_ids=list(d.tick_ids), snapshot_path=d.snapshot_path,
        message=f"{where}: {rule} ({d.people} no-mask {'person' if d.people == 1 else 'people'}, seen "
                f"{d.nomask_faces} times on {d.nomask_frames}/{d.frames} frames)",
    )
