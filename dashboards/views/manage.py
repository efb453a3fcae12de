"""Register, edit, disable or remove a camera. Writes go through the registry module; the source URL is
never shown back (only its masked form), and an edit keeps the stored URL unless a new one is typed.

Roles (``maskwatch.dashboards.auth``): a viewer gets no form; an operator manages cameras, but only an
admin puts
one on a private network or changes the source of one that is (checked on save, not only by a disabled
checkbox, since a browser can send any widget value)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import streamlit as st
from pydantic import ValidationError

from maskwatch.cameras import registry, sites
from maskwatch.dashboards import auth, data, queries, ui
from maskwatch.flows.snapshots import draw_area
from maskwatch.schemas.events import POINTS_FORMAT, Camera, CountingArea, Schedule, Site, parse_points
from maskwatch.schemas.parse import SchemaError

NEW = "+ New camera"

settings = ui.settings()
st.title("Manage cameras")
me = auth.identity()
if not me.at_least("operator"):
    st.info(f"Your role ({me.role}) can see cameras on the Cameras page, not change them: that takes the "
            "operator role, which an admin sets in the dashboard's users file.", icon=":material/lock:")
    st.stop()
admin = me.at_least("admin")

cameras = data.cameras(settings)
# A widget's state can only be set before it is drawn: a save/remove asks for the next selection here.
if "manage_select_next" in st.session_state:
    st.session_state["manage_camera"] = st.session_state.pop("manage_select_next")
choice = st.selectbox("Camera", [NEW, *cameras["id"].to_list()], key="manage_camera",
                      format_func=lambda c: c if c == NEW else
                      f"{c} · {cameras.filter(cameras['id'] == c)['name'].item()}")
# The dashboard's store identity may not read sources: the masked display URL stands in (registry).
current = None if choice == NEW else registry.get_camera(choice, settings, sources=False)
if choice != NEW and current is None:
    st.warning(f"Camera {ui.plain(choice)} was removed meanwhile.")
    data.clear_cameras()
    st.stop()

# Widget keys carry the camera, so switching cameras shows that camera's values, not the last ones typed.
slot = "new" if current is None else current.id
flash = st.session_state.pop("manage_flash", None)
if flash:
    st.success(flash, icon=":material/check_circle:")


def optional(value: float | int | None) -> Any:
    return None if value in (None, 0) else value


def _polygons(text: str) -> list[list[tuple[float, float]]]:
    """One polygon per line, as 'x,y x,y x,y' (fractions of the frame); ValueError names the bad line."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(parse_points(line))
            except ValueError:
                raise ValueError(f"line {number}: expected {POINTS_FORMAT}") from None
    return out


def _lines(polygons: list[list[tuple[float, float]]]) -> str:
    return "\n".join(" ".join(f"{x:g},{y:g}" for x, y in polygon) for polygon in polygons)


def area_editor(camera: Camera) -> None:
    """The camera's counting area over its latest snapshot, and a form to change it."""
    st.subheader("Counting area")
    st.caption("Faces count towards rules and compliance only when the centre of their box is inside an "
               "include polygon (none: the whole frame), outside every exclude polygon, and the face is at "
               "least the minimum size. Other faces are stored, flagged as ignored. Points are fractions "
               "of the frame from its top left, one polygon per line: `0,0 0.5,0 0.5,1 0,1`.")
    left, right = st.columns([3, 2])
    latest = ui.snapshot_file(queries.latest_snapshot(settings, camera.id), settings)
    image = cv2.imread(str(latest)) if latest is not None else None
    if image is None:
        left.info("No snapshot of this camera yet (one is kept for each frame with a no-mask face).",
                  icon=":material/image:")
    else:
        left.image(cv2.cvtColor(draw_area(image, camera.area), cv2.COLOR_BGR2RGB),
                   caption="Latest snapshot: include polygons in blue, exclude in purple")
    with right.form(f"area_form:{camera.id}"):
        include = st.text_area("Include polygons", value=_lines(camera.area.include),
                               key=f"include:{camera.id}")
        exclude = st.text_area("Exclude polygons", value=_lines(camera.area.exclude),
                               key=f"exclude:{camera.id}")
        min_px = st.number_input("Minimum face height (px)", min_value=0, max_value=4096, step=1,
                                 value=camera.area.min_face_px, key=f"min_face_px:{camera.id}")
        if st.form_submit_button("Save counting area"):
            try:
                area = CountingArea(include=_polygons(include), exclude=_polygons(exclude),
                                    min_face_px=int(min_px))
            except (ValueError, ValidationError) as exc:
                st.error(f"Not saved: {ui.plain(exc)}", icon=":material/error:")
                return
            with ui.store_errors(settings):
                registry.set_area(camera.id, area, settings)
            data.clear_cameras()
            st.session_state["manage_flash"] = (f"Counting area of {ui.plain(camera.id)} saved: "
                                                f"{len(area.include)} include, {len(area.exclude)} exclude.")
            st.rerun()


def _paused(schedule: Schedule) -> str:
    until = schedule.paused_until
    return f"paused until {until:%Y-%m-%d %H:%M} UTC" if until and until > datetime.now(UTC) else "not paused"


def schedule_editor(camera: Camera) -> None:
    """When the camera (and its site) may raise alerts: hours, and a pause from now."""
    st.subheader("Alert schedule")
    site = sites.get_site(camera.site, settings) if camera.site else None
    timezone = site.timezone if site else "UTC"
    st.caption(f"Hours are local to the site ({ui.plain(camera.site or 'no site')}: {ui.plain(timezone)}), "
               "one "
               "range per line, e.g. `mon-fri 08:00-18:00` or `22:00-06:00`. Outside them no alert is "
               "raised; frames, faces and health are still stored. The site's schedule applies as well.")
    left, right = st.columns(2)
    with left.form(f"schedule_form:{camera.id}"):
        open_text = st.text_area("Open hours (empty: always)", value="\n".join(camera.schedule.open_hours),
                                 key=f"open:{camera.id}")
        quiet_text = st.text_area("Quiet hours", value="\n".join(camera.schedule.quiet_hours),
                                  key=f"quiet:{camera.id}")
        if st.form_submit_button("Save schedule"):
            try:
                schedule = Schedule(open_hours=[x for x in open_text.splitlines() if x.strip()],
                                    quiet_hours=[x for x in quiet_text.splitlines() if x.strip()],
                                    paused_until=camera.schedule.paused_until)
            except ValidationError as exc:
                st.error(f"Not saved: {ui.plain('; '.join(e['msg'] for e in exc.errors()))}",
                         icon=":material/error:")
            else:
                with ui.store_errors(settings):
                    registry.set_schedule(camera.id, schedule, settings)
                st.session_state["manage_flash"] = f"Schedule of {ui.plain(camera.id)} saved."
                st.rerun()
    right.markdown(f"Camera: {_paused(camera.schedule)}"
                   + (f" · site: {_paused(site.schedule)}" if site else ""))
    hours = right.number_input("Pause for (hours)", min_value=0.25, max_value=24.0 * 30, value=2.0, step=0.25,
                               key=f"pause_hours:{camera.id}")
    until = datetime.now(UTC) + timedelta(hours=float(hours))
    a, b, c = right.columns(3)
    if a.button("Pause camera", key=f"pause_camera:{camera.id}"):
        with ui.store_errors(settings):
            registry.set_schedule(camera.id, camera.schedule.model_copy(update={"paused_until": until}),
                                  settings)
        st.session_state["manage_flash"] = f"Alerts of {ui.plain(camera.id)} paused until {until:%H:%M} UTC."
        st.rerun()
    if camera.site and b.button("Pause site", key=f"pause_site:{camera.id}"):
        with ui.store_errors(settings):
            current_site = site or Site(id=camera.site)
            sites.set_schedule(camera.site, current_site.schedule.model_copy(update={"paused_until": until}),
                               settings)
        st.session_state["manage_flash"] = (f"Alerts of site {ui.plain(camera.site)} paused until "
                                            f"{until:%H:%M} UTC.")
        st.rerun()
    if c.button("Resume camera and site", key=f"resume:{camera.id}"):
        with ui.store_errors(settings):
            registry.set_schedule(camera.id, camera.schedule.model_copy(update={"paused_until": None}),
                                  settings)
            if site is not None and site.schedule.paused_until is not None:
                sites.set_schedule(site.id, site.schedule.model_copy(update={"paused_until": None}), settings)
        st.session_state["manage_flash"] = f"Alerts of {ui.plain(camera.id)} resumed."
        st.rerun()


with st.form("camera_form", clear_on_submit=False):
    left, right = st.columns(2)
    camera_id = left.text_input("Id", value=current.id if current else "", disabled=current is not None,
                                help="Letters, digits, '.', '_' or '-'; no colon. Cannot be changed.",
                                key=f"id:{slot}")
    name = right.text_input("Name", value=current.name if current else "", key=f"name:{slot}")
    site = left.text_input("Site", value=current.site if current else "", key=f"site:{slot}")
    zone = right.text_input("Zone", value=current.zone if current else "", key=f"zone:{slot}")
    if current:
        st.caption(f"Current source: {ui.plain(current.display_url)} (credentials masked)")
    source = st.text_input(
        "Source URL" + (" (leave empty to keep the current one and its credentials)" if current else ""),
        value="", type="password",  # it may hold credentials: never echoed on screen
        placeholder="rtsp://user:password@host:554/stream, https://host/snapshot.jpg or file:///path",
        key=f"source:{slot}",
    )
    interval = left.number_input("Snapshot interval (s)", min_value=0.1, max_value=86400.0,
                                 value=float(current.interval_s) if current else 5.0, key=f"interval:{slot}")
    enabled = right.checkbox("Enabled", value=current.enabled if current else True, key=f"enabled:{slot}")
    # SSRF policy (maskwatch.netpolicy): private/loopback addresses only for cameras said to be on the LAN.
    private = right.checkbox("On a private network", key=f"private:{slot}", disabled=not admin,
                             value=current.allow_private_network if current else False,
                             help="Allow a private, loopback or link-local address (a camera on your LAN). "
                                  "Cloud metadata addresses are refused regardless."
                                  + ("" if admin else " Only an admin can set it, or change the source "
                                                      "of a camera that has it."))
    st.markdown("**Rule overrides** (empty = the flow's defaults, 0 = that rule off)")
    rules = current.rules if current else None
    r1, r2, r3 = st.columns(3)
    min_people = r1.number_input("No-mask people in the window", min_value=0, step=1,
                                 key=f"min_people:{slot}", value=rules.min_people if rules else None,
                                 help="Distinct people, however many ticks each is seen on.")
    in_frame = r2.number_input("No-mask people on one frame", min_value=0, step=1, key=f"in_frame:{slot}",
                               value=rules.min_people_in_frame if rules else None)
    dwell = r3.number_input("One no-mask person in view for (s)", min_value=0.0, key=f"dwell:{slot}",
                            value=rules.min_dwell_s if rules else None)
    window_s = r1.number_input("Window (s)", min_value=0.0, value=rules.window_s if rules else None,
                               key=f"window:{slot}")
    ratio = r2.number_input("Share of frames with a no-mask face", min_value=0.0, max_value=1.0,
                            key=f"ratio:{slot}", value=rules.nomask_ratio if rules else None)
    cooldown = r3.number_input("Cool-down (s)", min_value=0.0, value=rules.cooldown_s if rules else None,
                               key=f"cooldown:{slot}")
    submitted = st.form_submit_button("Save camera", type="primary")

if submitted:
    fields: dict[str, Any] = {
        "id": current.id if current else camera_id.strip(),
        "name": name.strip(),
        "site": site.strip(),
        "zone": zone.strip(),
        "source_url": source.strip() or (current.source_url if current else ""),
        "interval_s": interval,
        "enabled": enabled,
        "allow_private_network": private,
        "rules": {**(current.rules.model_dump(exclude_none=True) if current else {}),
                  **{k: v for k, v in {"min_people": min_people, "min_people_in_frame": in_frame,
                                       "min_dwell_s": dwell, "window_s": optional(window_s),
                                       "nomask_ratio": ratio, "cooldown_s": cooldown}.items()
                     if v is not None}},
        "area": current.area if current else {},  # set below, on their own forms
        "schedule": current.schedule if current else {},
    }
    # Without admin, the opt-in may only stay as an admin left it: same camera, same source.
    kept_grant = bool(current and current.allow_private_network and not source.strip())
    if not fields["source_url"]:
        st.error("Source URL is required for a new camera.")
    elif private and not admin and not kept_grant:
        st.error("Not saved: only an admin can put a camera on a private network or change the source of "
                 "a camera that is on one.", icon=":material/lock:")
    elif current is None and fields["id"] and registry.get_camera(fields["id"], settings,
                                                                  sources=False) is not None:
        st.error(f"A camera with id {ui.plain(fields['id'])} already exists; pick it in the list above "
                 "to edit it.")
    else:
        try:
            with ui.store_errors(settings):
                # Only a typed source is written: the one shown is masked, the stored one stays.
                saved = registry.put_camera(registry.parse_camera(fields), settings,
                                            source=current is None or bool(source.strip()))
        except (SchemaError, ValueError) as exc:
            st.error(f"Not saved: {ui.plain(exc)}", icon=":material/error:")
        else:
            data.clear_cameras()
            for key in [k for k in st.session_state if str(k).endswith(":new")]:
                del st.session_state[key]  # an empty form next time "New camera" is picked
            st.session_state["manage_flash"] = (f"Saved {ui.plain(saved.id)} "
                                                f"(source {ui.plain(saved.display_url)}).")
            st.session_state["manage_select_next"] = saved.id
            st.rerun()

if current:
    st.divider()
    area_editor(current)
    st.divider()
    schedule_editor(current)
    st.divider()
    a, b = st.columns(2)
    if a.button("Disable camera" if current.enabled else "Enable camera", key="toggle_enabled"):
        with ui.store_errors(settings):
            registry.set_enabled(current.id, not current.enabled, settings)
        data.clear_cameras()
        done = "disabled" if current.enabled else "enabled"
        st.session_state["manage_flash"] = f"{ui.plain(current.id)} {done}."
        st.rerun()
    confirm = b.checkbox("I want to remove this camera", key="confirm_remove")
    if b.button("Remove camera", disabled=not confirm, key="remove"):
        with ui.store_errors(settings):
            registry.remove_camera(current.id, settings)
        data.clear_cameras()
        st.session_state["manage_flash"] = f"{ui.plain(current.id)} removed (its history stays in the store)."
        st.session_state["manage_select_next"] = NEW
        st.rerun()
