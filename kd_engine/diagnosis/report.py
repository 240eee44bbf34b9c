"""`kdw report RUN [RUN_B]`: one static HTML page (Plotly, no server) with a run's curves, health
checks, copied mistakes and layer ranking, or two runs side by side, to attach to a paper or an
issue. plotly.js is inlined once, so the file opens offline.
"""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kd_engine.diagnosis import figures
from kd_engine.diagnosis.health import run_health
from kd_engine.diagnosis.layers import layer_prediction, layer_ranking
from kd_engine.diagnosis.mistakes import adoption, copied_mistakes, find_control
from kd_engine.diagnosis.weighting import FACTORS, weighting_effect, weighting_frame
from kd_engine.errors import KDWError
from kd_engine.store import Run

CURVE_KEYS = ("val/student_acc", "val/teacher_acc", "val/student_mAP", "val/teacher_mAP", "train/loss",
              "train/task", "train/distill", "lr")
MAX_POINTS = 400       # per run and key: enough for the shape, small enough for a file to mail
MISTAKES_SHOWN = 12
ICON = {"ok": "✓", "warn": "⚠", "fail": "✗", "no data": "…", "n/a": "–"}
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.fail{color:#b00020}.warn{color:#a15c00}.ok{color:#1b7f3b}.cols{display:flex;gap:24px;flex-wrap:wrap}
.cols>div{flex:1 1 0;min-width:420px;overflow:hidden}.grid{display:flex;flex-wrap:wrap;gap:8px}.cell{text-align:center;font-size:.8em}
.metric{border:1px solid #ddd;padding:3px 8px;font-size:.9em}.cell img{width:72px;height:72px;image-rendering:pixelated;border:1px solid #ccc}.muted{color:#777}"""


def _fig(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame.empty:
        return "<p class='muted'>nothing recorded</p>"
    return frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", border=0, na_rep="–")


def _png(image: np.ndarray) -> str:
    from PIL import Image

    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _name(names: list[str], k) -> str:
    try:
        return names[int(k)]
    except (ValueError, TypeError, IndexError):
        return str(k)


def _evidence(check) -> str:
    parts = [f"{html.escape(check.page)} page" if check.page else "",
             f"<code>{html.escape(check.key)}</code>" if check.key else "",
             f"epoch {check.epoch}" if check.epoch is not None else ""]
    return " · ".join(p for p in parts if p)


def health_html(run: Run) -> str:
    rows = "".join(f"<tr class='{html.escape(c.status.replace(' ', '-'))}'><td>{ICON.get(c.status, '•')} "
                   f"{html.escape(c.status)}</td><td>{html.escape(c.name)}</td><td>{html.escape(c.message)}</td>"
                   f"<td class='muted'>{_evidence(c)}</td></tr>" for c in run_health(run))
    return f"<table><tr><th>status</th><th>check</th><th>finding</th><th>evidence</th></tr>{rows}</table>"


def curves_html(runs: list[Run]) -> str:
    frames = []
    for run in runs:
        keys = [k for k in run.scalar_keys() if k in CURVE_KEYS or k.startswith("train/term/")]
        data = run.scalars(keys=keys) if keys else pd.DataFrame(columns=["step", "key", "value"])
        for key, part in data.groupby("key"):
            step = max(1, len(part) // MAX_POINTS)
            frames.append(part.iloc[::step].assign(run=run.run_id))
    if not frames:
        return "<p class='muted'>no scalars recorded yet</p>"
    data = pd.concat(frames, ignore_index=True)
    order = [k for k in CURVE_KEYS if k in set(data["key"])] + sorted(k for k in set(data["key"]) if k not in CURVE_KEYS)
    ids = [r.run_id for r in runs]
    return "<div class='cols'>" + "".join(f"<div>{_fig(figures.scalar_lines(data, k, ids))}</div>" for k in order) + "</div>"


def mistakes_html(run: Run, control: Run | None) -> str:
    try:
        table = adoption(run, control=control)
        ranked = copied_mistakes(run)
    except KDWError as exc:
        return f"<p class='muted'>{html.escape(str(exc))}</p>"
    label = "distilled student"
    note = (f"control: scratch run <code>{html.escape(control.run_id)}</code>" if control is not None else
            "no scratch run of the same data and seed was found, so there is no control")
    out = [f"<p>{note}</p>", _fig(figures.adoption_curves({label: table})), _table(table)]
    names = [str(c) for c in run.meta().get("class_names") or []]
    shown = ranked.head(MISTAKES_SHOWN)
    images = run.images(shown["instance_id"].tolist())
    cells = []
    for row in shown.itertuples():
        img = images.get(int(row.instance_id))
        pic = f"<img alt='#{int(row.instance_id)}' src='data:image/png;base64,{_png(img)}'>" if img is not None else ""
        cells.append(f"<div class='cell'>{pic}<br>#{int(row.instance_id)} label {html.escape(_name(names, row.label))}"
                     f"<br>teacher → {html.escape(_name(names, row.teacher_pred))} ({row.teacher_conf:.2f})"
                     f"<br>student → {html.escape(_name(names, row.student_pred))} ({row.student_conf:.2f})"
                     f"<br><span class='muted'>copied {int(row.epochs_copied)} epoch(s)</span></div>")
    out.append(f"<p>{len(ranked)} instance(s) where the student repeats the teacher's wrong class at the last "
               f"epoch; the first {len(shown)}:</p><div class='grid'>{''.join(cells)}</div>")
    return "".join(out)


def layers_html(run: Run) -> str:
    scores = layer_prediction(run)
    if scores.empty:
        return ("<p class='muted'>no per-instance disparity recorded (the run has no teacher, or was "
                "recorded before per-instance disparity was stored)</p>")
    ranking = layer_ranking(run, scores=scores)
    return _fig(figures.layer_auroc_bars(ranking)) + _table(ranking) + _fig(figures.layer_score_curves(scores))


def weighting_html(run: Run) -> str:
    frame = weighting_frame(run)
    if frame.empty or frame["weight"].nunique() <= 1:
        return "<p class='muted'>no instance weights, or the same weight everywhere (uniform weighting)</p>"
    boxes = "".join(f"<div>{_fig(figures.weight_by_group(frame, f, labels))}</div>"
                    for f, labels in FACTORS.items() if frame[f].notna().any())
    return _table(weighting_effect(run, frame=frame)) + f"<div class='cols'>{boxes}</div>"


def _header(run: Run) -> str:
    meta = run.meta()
    metrics = {k: v for k, v in run.final_metrics().items() if "/" in k}
    facts = " · ".join(html.escape(str(p)) for p in (run.status(), meta.get("method"), meta.get("dataset"),
                                                      f"teacher {meta['teacher']}" if meta.get("teacher") else "no teacher",
                                                      f"student {meta.get('student')}"))
    cells = "".join(f"<div class='metric'>{html.escape(k)}<br><b>{v:.4f}</b></div>" for k, v in sorted(metrics.items()))
    return f"<p><b>{html.escape(run.run_id)}</b> · {facts}</p><div class='grid'>{cells}</div>"


def summary(run: Run, control: Run | None) -> dict[str, object]:
    """The few numbers two runs are compared on first."""
    metrics = run.final_metrics()
    checks = run_health(run)
    row: dict[str, object] = {key: metrics.get(key) for key in ("test/student_acc", "test/teacher_acc",
                                                                "test/student_mAP") if key in metrics}
    row["health problems"] = ", ".join(sorted({c.name for c in checks if c.flagged})) or "none"
    try:
        last = adoption(run, control=control).iloc[-1]
        row["teacher mistakes adopted"] = f"{int(last['adopted'])} of {int(last['teacher_mistakes'])}"
        row["… by the scratch control"] = ("–" if pd.isna(last["control_adopted"])
                                           else f"{int(last['control_adopted'])} of {int(last['teacher_mistakes'])}")
    except (KDWError, IndexError):
        pass
    ranking = layer_ranking(run)
    if len(ranking):
        row["layer that best predicts errors"] = f"{ranking['student_layer'].iloc[0]} (AUROC {ranking['auroc'].iloc[0]:.3f})"
    return row


def _sections(run: Run, control: Run | None) -> dict[str, str]:
    return {"Health": health_html(run), "Copied mistakes": mistakes_html(run, control),
            "Layers that predict trouble": layers_html(run), "What the weighting did": weighting_html(run)}


def build_report(runs: list[Run], controls: list[Run | None] | None = None) -> str:
    """The page's HTML for one run, or for two compared column by column."""
    import plotly.offline

    if not 1 <= len(runs) <= 2:
        raise KDWError(f"report: give one run or two to compare, got {len(runs)}")
    controls = controls if controls is not None else [find_control(r) for r in runs]
    title = runs[0].run_id if len(runs) == 1 else f"{runs[0].run_id} vs {runs[1].run_id}"
    body = [f"<h1>KD Workbench report: {html.escape(title)}</h1>",
            f"<p class='muted'>written {time.strftime('%Y-%m-%d %H:%M:%S')} by kdw report</p>"]
    body.append("<div class='cols'>" + "".join(f"<div>{_header(r)}</div>" for r in runs) + "</div>")
    if len(runs) == 2:
        table = pd.DataFrame({r.run_id: summary(r, c) for r, c in zip(runs, controls)})
        body.append("<h2>Side by side</h2>" + table.rename_axis("").reset_index().to_html(
            index=False, border=0, na_rep="–", float_format=lambda v: f"{v:.4f}"))
    parts = [_sections(r, c) for r, c in zip(runs, controls)]
    for section in parts[0]:
        if section == "Copied mistakes":  # health first, then the curves it points to
            body.append("<h2>Curves</h2>" + curves_html(runs))
        body.append(f"<h2>{section}</h2><div class='cols'>"
                    + "".join(f"<div>{'<h3>' + html.escape(r.run_id) + '</h3>' if len(runs) > 1 else ''}{p[section]}</div>"
                              for r, p in zip(runs, parts)) + "</div>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            f"</head><body>{''.join(body)}</body></html>")


def write_report(runs: list[Run], output: str | Path, controls: list[Run | None] | None = None) -> Path:
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(build_report(runs, controls), encoding="utf-8")
    tmp.replace(path)
    return path
