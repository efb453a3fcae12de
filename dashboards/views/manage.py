"""Register, edit, disable or remove a camera. Writes go through the registry module; the source URL is
never shown back (only its masked form), and an edit keeps the stored URL unless a new one is typed.

Roles (``maskwatch.dashboards.auth``): a viewer gets no form; an operator manages cameras, but only an
admin puts
one on a private network or changes the source of one that is (checked on save, not only by a disabled
checkbox, since a browser can send any widget value)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from maskwatch.cameras import registry
from maskwatch.dashboards import auth, data, ui
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
current = None if choice == NEW else registry.get_camera(choice, settings)
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
    st.markdown("**Rule overrides** (empty = the flow's defaults)")
    rules = current.rules if current else None
    r1, r2, r3, r4 = st.columns(4)
    min_faces = r1.number_input("Min no-mask faces", min_value=0, step=1, key=f"min_faces:{slot}",
                                value=rules.min_nomask_faces if rules else None)
    window_s = r2.number_input("Window (s)", min_value=0.0, value=rules.window_s if rules else None,
                               key=f"window:{slot}")
    ratio = r3.number_input("No-mask ratio", min_value=0.0, max_value=1.0, key=f"ratio:{slot}",
                            value=rules.nomask_ratio if rules else None)
    cooldown = r4.number_input("Cool-down (s)", min_value=0.0, value=rules.cooldown_s if rules else None,
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
        "rules": {k: v for k, v in {"min_nomask_faces": optional(min_faces), "window_s": optional(window_s),
                                    "nomask_ratio": ratio, "cooldown_s": cooldown}.items() if v is not None},
    }
    # Without admin, the opt-in may only stay as an admin left it: same camera, same source.
    kept_grant = bool(current and current.allow_private_network and not source.strip())
    if not fields["source_url"]:
        st.error("Source URL is required for a new camera.")
    elif private and not admin and not kept_grant:
        st.error("Not saved: only an admin can put a camera on a private network or change the source of "
                 "a camera that is on one.", icon=":material/lock:")
    elif current is None and fields["id"] and registry.get_camera(fields["id"], settings) is not None:
        st.error(f"A camera with id {ui.plain(fields['id'])} already exists; pick it in the list above "
                 "to edit it.")
    else:
        try:
            with ui.store_errors(settings):
                saved = registry.put_camera(registry.parse_camera(fields), settings)
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
