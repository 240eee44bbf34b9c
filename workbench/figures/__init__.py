"""Plotly figures built by plain functions from DataFrames, shared by the dashboard and the
notebooks so a plot looks the same in both."""
from workbench.figures.dense import *  # noqa: F401,F403
from workbench.figures.harmonization import *  # noqa: F401,F403
from workbench.figures.segments import *  # noqa: F401,F403
from workbench.figures.detection import *  # noqa: F401,F403
import plotly.io as _pio

# One look everywhere: figures that name no template (the live curves skip it for speed) get this.
_pio.templates.default = "plotly_white"

from workbench.figures.results import *  # noqa: F401,F403
from workbench.figures.runs import *  # noqa: F401,F403
from workbench.figures.search import *  # noqa: F401,F403
from workbench.figures.anomaly import *  # noqa: F401,F403
from workbench.figures.bev import *  # noqa: F401,F403
from workbench.figures.bev_masks import *  # noqa: F401,F403
from workbench.figures.points import *  # noqa: F401,F403
from workbench.figures.box_refine import *  # noqa: F401,F403
from workbench.figures.bckd import *  # noqa: F401,F403
