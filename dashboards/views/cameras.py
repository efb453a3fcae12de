"""Cameras: registry with health over the range (last frame, last error, uptime) and compliance."""

from __future__ import annotations

import polars as pl
import streamlit as st

from maskwatch.dashboards import data, ui
from maskwatch.schemas.redaction import redact_text

settings = ui.settings()
scope = ui.scope()

st.title("Cameras")
st.caption(ui.describe(scope))

status = data.camera_status(settings, scope)
if status.is_empty():
    st.info("No cameras registered (or none match the filters). Add one on **Manage cameras**, "
            "or import a YAML file with `maskwatch cameras import`.", icon=":material/videocam_off:")
    st.stop()

reporting = status.filter(pl.col("checks").fill_null(0) > 0)
down = reporting.filter(pl.col("last_status") != "ok")
cols = st.columns(4)
cols[0].metric("Registered", ui.count(status.height), border=True)
cols[1].metric("Enabled", ui.count(int(status["enabled"].sum())), border=True)
cols[2].metric("Down now", ui.count(down.height), border=True,
               help="Cameras whose latest check in the range failed")
silent = status.filter(pl.col("enabled") & (pl.col("checks").fill_null(0) == 0))
cols[3].metric("Silent", ui.count(silent.height), border=True,
               help="Enabled cameras with no health check in the range (ticker or flow not running?)")

table = status.select(
    "camera_id", "name", "site", "zone", "enabled",
    pl.col("last_status").fill_null("no data").alias("status"),
    "last_frame_at", "uptime", "compliance",
    pl.col("faces").fill_null(0), pl.col("nomask_faces").fill_null(0),
    # Errors are redacted when written; masked again here in case a writer forgot.
    "last_error_at", pl.col("last_error").fill_null("").map_elements(redact_text, return_dtype=pl.String),
    pl.col("display_url").alias("source"), "interval_s",
).sort(["site", "zone", "camera_id"])
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "camera_id": st.column_config.TextColumn("Camera"),
        "last_frame_at": st.column_config.DatetimeColumn("Last frame", format="YYYY-MM-DD HH:mm:ss"),
        "last_error_at": st.column_config.DatetimeColumn("Last error at", format="YYYY-MM-DD HH:mm:ss"),
        "last_error": st.column_config.TextColumn("Last error", width="large"),
        "uptime": st.column_config.ProgressColumn("Uptime", format="percent", min_value=0, max_value=1),
        "compliance": st.column_config.NumberColumn("Compliance", format="percent"),
        "faces": st.column_config.NumberColumn("Faces"),
        "nomask_faces": st.column_config.NumberColumn("No-mask faces"),
        "source": st.column_config.TextColumn("Source (credentials masked)"),
        "interval_s": st.column_config.NumberColumn("Every (s)"),
    },
)
if down.height:
    st.subheader("Down")
    for row in down.sort("camera_id").iter_rows(named=True):
        reason = redact_text(row["last_error"] or row["last_status"])
        st.error(f"**{ui.plain(row['camera_id'])}** ({ui.plain(row['site'])} / {ui.plain(row['zone'])}): "
                 f"{ui.plain(reason)} · last frame {row['last_frame_at'] or 'never in this range'}",
                 icon=":material/error:")

changes = data.health_changes(settings, scope)
st.subheader("Health changes")
st.caption("When cameras went down and came back up (debounced: down after "
           "`MASKWATCH_FLOW_HEALTH_DOWN_AFTER` failed checks in a row, back up after "
           "`MASKWATCH_FLOW_HEALTH_RECOVER_AFTER` good ones); the notifier posts the downs and ups.")
if changes.is_empty():
    st.info("No camera changed state in this range.", icon=":material/check_circle:")
else:
    st.dataframe(
        changes.with_columns(
            pl.col("error").map_elements(redact_text, return_dtype=pl.String),
        ).select("changed_at", "camera_id", "camera_name", "site", "zone", "kind", "previous_state", "state",
                 "consecutive_failures", "status", "error"),
        hide_index=True,
        width="stretch",
        column_config={
            "changed_at": st.column_config.DatetimeColumn("Changed at", format="YYYY-MM-DD HH:mm:ss"),
            "camera_id": st.column_config.TextColumn("Camera"),
            "camera_name": st.column_config.TextColumn("Name"),
            "kind": st.column_config.TextColumn("Change"),
            "previous_state": st.column_config.TextColumn("From"),
            "state": st.column_config.TextColumn("To"),
            "consecutive_failures": st.column_config.NumberColumn("Failures in a row"),
            "error": st.column_config.TextColumn("Error", width="large"),
        },
    )
