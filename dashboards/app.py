"""maskwatch analytics dashboard (Streamlit), served by ``maskwatch dashboard run``.

Reads ClickHouse through the store layer at MASKWATCH_STORE_URL, the same URL the flow writes to.
Sign-in (``maskwatch.dashboards.auth``) comes before anything else, store checks included.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from maskwatch.dashboards import auth, ui

# Not "pages/": Streamlit treats a pages/ folder next to the entry script as a v1 multipage app and runs
# a page file straight from its URL without this script, i.e. without the sign-in below.
PAGES = Path(__file__).with_name("views")

st.set_page_config(page_title="maskwatch", page_icon=":material/masks:", layout="wide")
auth.require_login()

settings = ui.settings()
navigation = st.navigation(
    {
        "Compliance": [
            st.Page(PAGES / "overview.py", title="Overview", icon=":material/monitoring:", default=True),
            st.Page(PAGES / "patterns.py", title="Patterns", icon=":material/calendar_view_week:"),
        ],
        "Operations": [
            st.Page(PAGES / "alerts.py", title="Alerts", icon=":material/notifications_active:"),
            st.Page(PAGES / "cameras.py", title="Cameras", icon=":material/videocam:"),
            st.Page(PAGES / "manage.py", title="Manage cameras", icon=":material/edit:"),
        ],
        "Data": [st.Page(PAGES / "downloads.py", title="Downloads", icon=":material/download:")],
    }
)
st.sidebar.caption("maskwatch · times in UTC")
ui.check_store(settings)
ui.site_clocks(settings)
ui.sidebar_scope(settings)
with ui.store_errors(settings):
    navigation.run()
