"""Diagnosis: turn a run's records into answers about what went wrong in a distillation.

Everything here reads a run through `kd_engine.store`'s read API only, so it works on a finished
run and on one still training, from the dashboard, the notebooks and `kdw report` alike.

- `health`: short checks with a pointer to their evidence (teacher at chance, a dead
  distillation term, a feature tap that never fired, gradient balance, collapsed weights, a flat
  validation metric).
- `mistakes`: the teacher's mistakes the student copied, against a scratch student as control.
- `layers`: how well each layer's per-instance teacher-student disparity predicts the student's error.
- `weighting`: how the instance weights relate to the teacher's and student's correctness and to
  label noise.
- `report`: a static, offline HTML page of all of the above for one run or two.
"""
from kd_engine.diagnosis.health import Check, flagged, run_health
from kd_engine.diagnosis.layers import layer_prediction, layer_ranking
from kd_engine.diagnosis.mistakes import adoption, copied_mistakes, find_control
from kd_engine.diagnosis.weighting import weighting_effect, weighting_frame

__all__ = ["Check", "adoption", "copied_mistakes", "find_control", "flagged", "layer_prediction",
           "layer_ranking", "run_health", "weighting_effect", "weighting_frame"]
