"""Patterns: when no-mask faces happen (weekday × hour) and where (worst cameras and zones)."""

from __future__ import annotations

import altair as alt
import polars as pl
import streamlit as st

from maskwatch.dashboards import data, ui

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

settings = ui.settings()
scope = ui.scope()

st.title("Patterns")
st.caption(ui.describe(scope))

heat = data.heatmap(settings, scope)
st.subheader("No-mask faces by weekday and hour (UTC)")
if heat.is_empty():
    st.info("No no-mask faces in this range.", icon=":material/sentiment_satisfied:")
else:
    cells = pl.DataFrame({"weekday": list(range(1, 8))}).join(pl.DataFrame({"hour": list(range(24))}),
                                                                how="cross")
    grid = (
        cells.with_columns(pl.col("weekday").cast(heat.schema["weekday"]),
                           pl.col("hour").cast(heat.schema["hour"]))
        .join(heat, on=["weekday", "hour"], how="left")
        .with_columns(pl.col("nomask_faces").fill_null(0),
                      pl.col("weekday").map_elements(lambda d: WEEKDAYS[d - 1], return_dtype=pl.String)
                      .alias("day"))
    )
    st.altair_chart(
        alt.Chart(grid).mark_rect().encode(
            x=alt.X("hour:O", title="Hour of day (UTC)"),
            y=alt.Y("day:O", title=None, sort=WEEKDAYS),
            color=alt.Color("nomask_faces:Q", title="No-mask faces", scale=alt.Scale(scheme="orangered")),
            tooltip=["day:N", "hour:O", "nomask_faces:Q"],
        ).properties(height=260),
        width="stretch",
    )

st.subheader("Leaderboard: highest share of faces without a mask")
min_faces = st.slider("Only with at least this many faces in the range", 1, 500, 20, key="min_faces")
left, right = st.columns(2)
config = {
    "nomask_rate": st.column_config.ProgressColumn("No-mask share", format="percent", min_value=0,
                                                   max_value=1),
    "nomask_faces": st.column_config.NumberColumn("No-mask faces"),
    "camera_id": st.column_config.TextColumn("Camera"),
}
for column, by, title in ((left, "camera", "Worst cameras"), (right, "zone", "Worst zones")):
    with column:
        st.markdown(f"**{title}**")
        board = data.leaderboard(settings, scope, by, min_faces)  # type: ignore[arg-type]
        if board.is_empty():
            st.caption(f"No {by} with at least {min_faces} faces in this range.")
        else:
            st.dataframe(board.with_columns(pl.col("alerts").fill_null(0)), hide_index=True, width="stretch",
                         column_config=config)
