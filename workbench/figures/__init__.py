"""Plotly figures built by plain functions from DataFrames, shared by the dashboard and the
notebooks so a plot looks the same in both."""
from workbench.figures.detection import *  # noqa: F401,F403
from workbench.figures.results import *  # noqa: F401,F403
from workbench.figures.runs import *  # noqa: F401,F403
