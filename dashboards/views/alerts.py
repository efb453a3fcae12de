"""Alerts: a live feed (refreshes by itself), the detail of one alert with its annotated snapshots, and
acknowledgement."""

from __future__ import annotations

from dataclasses import replace

import polars as pl
import streamlit as st

from maskwatch.dashboards import acks, auth, data, queries, ui

REFRESH_S = 10

settings = ui.settings()
scope = ui.scope()

st.title("Alerts")
unacked = st.toggle("Unacknowledged only", key="unacked_only")


@st.fragment(run_every=REFRESH_S)
def feed() -> None:
    # The range's end moves with the clock, so new alerts appear without touching the page.
    live = replace(scope, end=max(scope.end, ui.range_end()))
    with ui.store_errors(settings):
        rows = data.alerts(settings, live, unacked)
    st.caption(f"{ui.describe(live)} · refreshed every {REFRESH_S} s · newest {queries.FEED_LIMIT} shown")
    if rows.is_empty():
        st.info("No alerts in this range." if not unacked else "No unacknowledged alerts in this range.",
                icon=":material/notifications_off:")
        return
    newest = rows.row(0, named=True)
    st.markdown(f"**{rows.height:,}{'+' if rows.height >= queries.FEED_LIMIT else ''} alerts** · newest "
                f"{newest['triggered_at']:%H:%M:%S} UTC, {ui.plain(newest['camera_id'])}: "
                f"{ui.plain(newest['message'])}")
    # Alert ids are opaque (hashes, from the flow), so the detail picker shows time, camera and count.
    st.session_state["alert_labels"] = {
        r["alert_id"]: f"{r['triggered_at']:%Y-%m-%d %H:%M:%S} · {r['camera_id']} · "
        f"{r['nomask_faces']} no-mask" + (" · acknowledged" if r["acknowledged"] else "")
        for r in rows.select("alert_id", "triggered_at", "camera_id", "nomask_faces", "acknowledged")
        .iter_rows(named=True)
    }
    st.dataframe(
        rows.select(
            "triggered_at", "camera_id", "site", "zone", "nomask_faces", "faces", "nomask_ratio", "rule",
            pl.when(pl.col("acknowledged"))
            .then(pl.lit("by ") + pl.col("acknowledged_by"))
            .otherwise(pl.lit(""))
            .alias("acknowledged"),
            "message", "alert_id",
        ),
        hide_index=True,
        width="stretch",
        height=320 if rows.height > 8 else "auto",
        column_config={
            "triggered_at": st.column_config.DatetimeColumn("Triggered (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "nomask_ratio": st.column_config.NumberColumn("Frames with no-mask", format="percent"),
            "nomask_faces": st.column_config.NumberColumn("No-mask faces"),
        },
    )


feed()

st.subheader("Alert detail")
labels: dict[str, str] = st.session_state.get("alert_labels") or {}
if not labels:
    st.stop()
selected = st.selectbox("Alert", list(labels), key="alert_id", format_func=lambda a: labels.get(a, a))
with ui.store_errors(settings):
    found = data.alert(settings, selected)
if found.is_empty():
    st.warning(f"Alert {ui.plain(selected)} is no longer in the store.")
    st.stop()
row = found.row(0, named=True)

flash = st.session_state.pop("alert_flash", None)
if flash:
    st.success(flash, icon=":material/check_circle:")
cols = st.columns(5)
cols[4].metric("No-mask people", ui.count(row["people"]), border=True,
               help="Distinct unmasked people in the window (faces associated across ticks)")
cols[0].metric("No-mask faces", ui.count(row["nomask_faces"]), border=True)
cols[1].metric("Faces in window", ui.count(row["faces"]), border=True)
cols[2].metric("Frames with no-mask", ui.pct(row["nomask_ratio"]), border=True,
               help="Share of the window's frames that had at least one face without a mask")
status = "Acknowledged" if row["acknowledged"] else "Resolved" if row["status"] == "resolved" else "Open"
cols[3].metric("Status", status, border=True, help="Open while its rule holds; resolved once no rule held "
               "for a whole window; acknowledged once someone took it on")
st.markdown(
    f"**{ui.plain(row['camera_id'])}** · {ui.plain(row['site'])} / {ui.plain(row['zone'])} · rule "
    f"{ui.plain(row['rule'])}  \n"
    f"Window {row['window_start']:%Y-%m-%d %H:%M:%S} → {row['window_end']:%H:%M:%S} UTC, "
    f"triggered {row['triggered_at']:%Y-%m-%d %H:%M:%S} UTC  \n{ui.plain(row['message'])}"
)
if row["acknowledged"]:
    st.caption(f"Acknowledged by {ui.plain(row['acknowledged_by'])} at "
               f"{row['acknowledged_at']:%Y-%m-%d %H:%M:%S} UTC"
               + (f": {ui.plain(row['note'])}" if row["note"] else ""))

with ui.store_errors(settings):
    life = queries.alert_life(settings, selected)
if life.height:
    st.dataframe(life, hide_index=True, width="stretch", column_config={
        "at": st.column_config.DatetimeColumn("When", format="YYYY-MM-DD HH:mm:ss"),
        "kind": st.column_config.TextColumn("Step"),
        "people": st.column_config.NumberColumn("No-mask people"),
        "nomask_faces": st.column_config.NumberColumn("Sightings"),
        "acknowledged_by": st.column_config.TextColumn("By"),
    })

with ui.store_errors(settings):
    frames = data.alert_frames(settings, selected)
captions = {
    f["snapshot_path"]: f"{f['scheduled_at']:%H:%M:%S} UTC · {f['nomask_faces']} of {f['faces']} "
    "faces without a mask"
    for f in frames.iter_rows(named=True) if f["snapshot_path"]
}
paths = [p for p in dict.fromkeys([*captions, row["snapshot_path"]]) if p]
shown = [(f, captions.get(p, "alert snapshot")) for p in paths if (f := ui.snapshot_file(p, settings))]
if shown:
    st.markdown(f"**Snapshots** ({len(shown)})")
    grid = st.columns(3)
    for i, (file, caption) in enumerate(shown[:9]):
        grid[i % 3].image(str(file), caption=caption, width="stretch")
else:
    st.caption("No annotated snapshot is available for this alert.")

me = auth.identity()
if not row["acknowledged"] and not me.at_least("operator"):
    st.caption(f"Acknowledging needs the operator or admin role (yours: {me.role}).")
elif not row["acknowledged"]:
    with st.form("ack_form"):
        # Signed in, the acknowledgement is the user's own; with login off, whoever is at the screen says.
        who = me.user or st.text_input("Your name", key="ack_by")
        note = st.text_input("Note (optional)", key="ack_note")
        if st.form_submit_button("Acknowledge", type="primary"):
            with ui.store_errors(settings):
                _, unpublished = acks.acknowledge(settings, selected, who, note)
            data.clear_alerts()
            by = ui.plain(who.strip() or "dashboard")
            st.session_state["alert_flash"] = f"Alert acknowledged by {by}." + (
                f" (Stored; not yet on the alert topic: {ui.plain(unpublished)}.)" if unpublished else "")
            st.rerun()
