"""The dashboard's queries behind a short-TTL cache, so reruns and several analysts on the same filters
share one round-trip to ClickHouse. Writes (acknowledge, registry) clear the caches they affect."""

from __future__ import annotations

import streamlit as st

from maskwatch.dashboards import queries

CACHE_TTL_S = 30
LIVE_TTL_S = 5  # the live alert feed refreshes every few seconds

_cache = st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=512)
_live = st.cache_data(ttl=LIVE_TTL_S, show_spinner=False, max_entries=64)

missing_tables = st.cache_data(ttl=LIVE_TTL_S, show_spinner=False, max_entries=16)(queries.missing_tables)
cameras = _live(queries.cameras)
sites = _live(queries.sites)
kpis = _cache(queries.kpis)
serving_models = _live(queries.serving_models)
timeseries = _cache(queries.timeseries)
heatmap = _cache(queries.heatmap)
leaderboard = _cache(queries.leaderboard)
camera_status = _cache(queries.camera_status)
health_changes = _cache(queries.health_changes)
alerts = _live(queries.alerts)
alert = _live(queries.alert)
alert_frames = _cache(queries.alert_frames)
download = _cache(queries.download)


def clear_alerts() -> None:
    alerts.clear()
    alert.clear()
    kpis.clear()


def clear_cameras() -> None:
    cameras.clear()
    camera_status.clear()
    health_changes.clear()
