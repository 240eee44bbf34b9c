"""The dashboard's pages (run by `st.navigation` from streamlit_app.py) and their helpers."""
