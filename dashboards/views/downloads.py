"""Downloads: the filtered rows of a table as CSV or Parquet (bounded; never camera source URLs)."""

from __future__ import annotations

import streamlit as st

from maskwatch.dashboards import data, queries, ui

settings = ui.settings()
scope = ui.scope()

st.title("Downloads")
st.caption(ui.describe(scope))
table = st.selectbox("Table", list(queries.DOWNLOADS), key="download_table",
                     format_func=lambda t: t.replace("_", " ").capitalize())
rows = data.download(settings, scope, table)
truncated = rows.height > queries.DOWNLOAD_LIMIT
rows = rows.head(queries.DOWNLOAD_LIMIT)
if rows.is_empty():
    st.info(f"No {table.replace('_', ' ')} rows in this range and filter.", icon=":material/inbox:")
    st.stop()
more = f" (first {queries.DOWNLOAD_LIMIT:,} only: narrow the range for the rest)" if truncated else ""
st.markdown(f"**{rows.height:,} rows** in this range and filter{more}")
stem = f"maskwatch-{table}-{scope.start:%Y%m%dT%H%M}-{scope.end:%Y%m%dT%H%M}"
a, b = st.columns(2)
a.download_button("Download CSV", ui.export(rows, "csv"), f"{stem}.csv", "text/csv", key="dl_csv",
                  on_click="ignore", icon=":material/table:")
b.download_button("Download Parquet", ui.export(rows, "parquet"), f"{stem}.parquet",
                  "application/vnd.apache.parquet", key="dl_parquet", on_click="ignore",
                  icon=":material/database:")
st.markdown("**Preview** (first 100 rows)")
st.dataframe(rows.head(100), hide_index=True, width="stretch")
