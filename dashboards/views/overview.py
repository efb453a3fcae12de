"""Overview: compliance, no-mask people (estimated) and sightings, and alerts over time, against the
previous period."""

from __future__ import annotations

import altair as alt
import polars as pl
import streamlit as st

from maskwatch.dashboards import data, queries, ui

settings = ui.settings()
scope = ui.scope()

st.title("Mask compliance")
st.caption(f"{ui.describe(scope)} · compared with the previous {ui.span_text(scope.span)}"
           + (" · from the hourly rollups (kept after the raw rows expire), to the hour"
              if queries.uses_rollups(scope) else ""))
serving = data.serving_models(settings)
if serving.height:
    newest = serving.row(0, named=True)
    st.caption(f"Models serving: detector {ui.plain(newest['detector_model'])}, classifier "
               f"{ui.plain(newest['classifier_model'])}"
               + (" (tuned models swapped in during the last hour)" if serving.height > 1 else ""))

PEOPLE_HELP = ("Distinct unmasked people: faces associated across each camera's consecutive ticks by place "
               "and size. An estimate: one person seen by two cameras counts twice, and one who walks far "
               "between two ticks or comes back later counts again.")
kpis = data.kpis(settings, scope)
now, before = (kpis.filter(pl.col("period") == p).row(0, named=True) for p in ("current", "previous"))
if now["frames"] == 0 and now["alerts"] == 0:
    st.info("No frames in this range and filter yet. Widen the time range, or check the Cameras page "
            "(are cameras registered and the flow running?).", icon=":material/hourglass_empty:")

cols = st.columns(6)
cols[0].metric("Compliance", ui.pct(now["compliance"]), ui.pct_delta(now["compliance"], before["compliance"]),
               help="Faces with a mask / faces seen", border=True)
cols[1].metric("Faces seen", ui.count(now["faces"]), ui.count_delta(now["faces"], before["faces"]),
               delta_color="off", border=True)
cols[2].metric("No-mask sightings", ui.count(now["nomask_faces"]),
               ui.count_delta(now["nomask_faces"], before["nomask_faces"]), delta_color="inverse",
               help="No-mask faces over all frames: one person on ten ticks is ten sightings", border=True)
cols[5].metric("No-mask people (est.)", ui.count(now["nomask_people"]),
               ui.count_delta(now["nomask_people"], before["nomask_people"]), delta_color="inverse",
               help=PEOPLE_HELP, border=True)
cols[3].metric("Alerts", ui.count(now["alerts"]), ui.count_delta(now["alerts"], before["alerts"]),
               delta_color="inverse", border=True)
cols[4].metric("Frames processed", ui.count(now["frames"]), ui.count_delta(now["frames"], before["frames"]),
               delta_color="off", border=True)

options = ["Auto", *queries.GRANULARITIES]
granularity = st.segmented_control("Granularity", options, default="Auto", key="granularity") or "Auto"
fitting = {name: s for name, s in queries.GRANULARITIES.items()
           if scope.span.total_seconds() / s <= queries.MAX_BUCKETS}
if granularity != "Auto" and granularity not in fitting:
    st.caption(f"{granularity} is too fine for this range; using the automatic granularity.")
bucket_s = fitting.get(granularity) or queries.auto_bucket(scope)
series = data.timeseries(settings, scope, bucket_s)
step = next(name for name, s in queries.GRANULARITIES.items() if s == bucket_s)

events = series.unpivot(index="bucket", on=["nomask_people", "nomask_faces", "alerts"],
                        variable_name="series", value_name="count").with_columns(
    pl.col("series").replace({"nomask_people": "No-mask people (est.)", "nomask_faces": "No-mask sightings",
                              "alerts": "Alerts"}))
left, right = st.columns(2)
with left:
    st.subheader("No-mask people, sightings and alerts")
    st.caption("People are estimated (hover the card above); sightings count a person once per frame.")
    st.altair_chart(
        alt.Chart(events).mark_line(point=len(series) <= 60).encode(
            x=alt.X("bucket:T", title=None, axis=alt.Axis(format="%d %b %H:%M")),
            y=alt.Y("count:Q", title=f"per {step}"),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="top")),
            tooltip=[alt.Tooltip("bucket:T", format="%d %b %H:%M"), "series:N", "count:Q"],
        ),
        width="stretch",
    )
with right:
    st.subheader("Compliance rate")
    st.altair_chart(
        alt.Chart(series.drop_nulls("compliance")).mark_area(opacity=0.35, line=True).encode(
            x=alt.X("bucket:T", title=None, axis=alt.Axis(format="%d %b %H:%M")),
            y=alt.Y("compliance:Q", title="faces with a mask", axis=alt.Axis(format="%"),
                    scale=alt.Scale(domain=[0, 1])),
            tooltip=[alt.Tooltip("bucket:T", format="%d %b %H:%M"), alt.Tooltip("compliance:Q", format=".1%"),
                     "faces:Q", "nomask_faces:Q"],
        ),
        width="stretch",
    )
