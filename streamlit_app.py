"""KD Workbench dashboard: `streamlit run streamlit_app.py` (or `kdw dashboard`, `make dashboard`).

The app only reads runs through `kd_engine.store` and starts training as `kdw train`
subprocesses; the runs directory comes from $KDW_RUNS_DIR (default ./runs).
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from kd_engine.host_check import allowed_hosts, host_allowed  # noqa: E402
from workbench.launcher import runs_dir  # noqa: E402

st.set_page_config(page_title="KD Workbench", page_icon=":material/science:", layout="wide")

# DNS rebinding: answer only under loopback names, the served address, or names the user added
# (server.allowedHosts). A session without a request (AppTest, bare mode) has no Host to check.
_host = st.context.headers.get("Host") if st.context.headers else None
if _host is not None and not host_allowed(
        _host, allowed_hosts(st.get_option("server.address"), st.get_option("server.allowedHosts") or [])):
    st.error(f"This dashboard does not answer to the host name {_host!r}. Open it under 127.0.0.1 or "
             "localhost, or start it with `kdw dashboard --allow-host NAME`.")
    st.stop()

PAGES = [
    st.Page("workbench/pages/runs.py", title="Runs", icon=":material/directions_run:", default=True),
    st.Page("workbench/pages/curves.py", title="Curves", icon=":material/show_chart:"),
    st.Page("workbench/pages/instances.py", title="Instances", icon=":material/balance:"),
    st.Page("workbench/pages/features.py", title="Features", icon=":material/layers:"),
    st.Page("workbench/pages/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("workbench/pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("workbench/pages/search.py", title="Searches", icon=":material/travel_explore:"),
    st.Page("workbench/pages/roles.py", title="Roles", icon=":material/swap_horiz:"),
    st.Page("workbench/pages/methods.py", title="Methods", icon=":material/menu_book:"),
]

page = st.navigation(PAGES)
st.sidebar.caption(f"KD Workbench · runs in `{runs_dir()}`")
page.run()
