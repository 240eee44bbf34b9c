"""The Streamlit dashboard's pages and components. Reads runs only through kd_engine.store."""
