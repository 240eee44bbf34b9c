# %% [markdown]
# # CS-MTL-KD: multi-task dense distillation with the Cauchy–Schwarz divergence, in miniature
#
# **The method.** Paper 13 distils a multi-task dense predictor (segmentation, depth, edges)
# from **one** multi-task teacher rather than one teacher per task, and replaces the KL
# divergence by the Cauchy–Schwarz divergence
# D_CS(p, q) = −log Σ p·q + ½ log Σ p² + ½ log Σ q², which is ≥ 0, symmetric, 0 only for p = q
# and blind to the scale of its arguments; its claim is that KL is over-sensitive (to the
# temperature, among other things) and CS is not. An "alternative match" transfers both
# intra-task knowledge (student task t to teacher task t) and inter-task knowledge (student
# task t, through a 1×1 adapter, to teacher task t′). In the engine: method `cs_mtl_kd`
# (`kd_engine/methods/cs_mtl_kd.py`), losses `pixel_cs` / `channel_cs` (`kd_engine/losses/dense.py`),
# the dense task (`kd_engine/tasks/dense.py`) with depth and edge heads.
#
# **Reconstruction** (the paper's abstract leaves these open): segmentation logits are compared
# per pixel over the classes, p = softmax(z/T); depth and edge logits per channel over the H·W
# positions, p = softmax(F/T) over space (never raw regression values: D_CS ignores their
# scale); the inter-task terms γ·Σ_{t′≠t} D(A_tt′(S_t), T_t′) with γ = 0.5 act on the heads'
# outputs; the KL baseline is the temperature KL on the same axes with Hinton's T² factor; the
# CS terms carry no T² factor.
#
# **The miniature** (`configs/cs_mtl_kd_digits.yaml`): 16×16 digit scenes (2×2 cells, 1–4 of
# them holding a scikit-learn digit 0, 1 or 2 at a random depth; the ink is dimmer when farther),
# with three per-pixel targets: the class (background + 3 digits), the depth (1.0 on
# background) and the edges of the label map. Teacher: an FCN of width 16 with depth and edge
# branches, trained once and cached; student: the same FCN at width 4 (about 13× fewer
# parameters). Adam, batch 16, 8 epochs, cosine schedule.
#
# **Arms** (same seeds: the seed fixes the scenes, the split and the student's initialisation):
#
# * `no_kd`: the multi-task student alone, **the baseline**;
# * `kl`: task losses + KL KD on every task at T = 1;
# * `cs`: task losses + CS KD on every task at T = 1 (intra-task only);
# * `cs_alt`: `cs` + inter-task matching through 1×1 adapters (γ = 0.5);
# * the temperature grid: `kl` and `cs` at T ∈ {1, 4, 16}, weight 1.
#
# **Metrics:** test mIoU (one confusion matrix over all test pixels), depth RMSE, edge F1 at 0.5
# (pixel-exact), and Δ_MTL = mean over the three of the relative change against `no_kd` of the
# same seed, sign flipped for RMSE (positive: better on average).
#
# **Claims to test:** CS beats KL; CS's metrics vary less across the temperature grid than KL's.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, a small data set (plumbing only, no verdict). `full`:
# 3 seeds, the config's epochs; its wall time is measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs, small data; "full": 3 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import os
import resource

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.dense_metrics import delta_mtl
from kd_engine.experiment import format_summary, setup, summarize
from kd_engine.store import open_run
from workbench.figures import arm_comparison, dense_panels, paired_differences

ctx = setup("p13_cs_mtl_kd", "configs/cs_mtl_kd_digits.yaml", budget, seeds=3, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
if budget == "smoke":
    base["data"]["params"].update(n_train=64, n_val=16, n_test=32)
base["record"] = {"instances": True, "eval_instances": True, "attention_maps": 4, "feature_probe_size": 16,
                  "tensorboard": False}
WORKERS = 1 if budget == "smoke" else 2
TEMPERATURES = [1.0] if budget == "smoke" else [1.0, 4.0, 16.0]
GAMMA = base["distill"]["params"]["alt_weight"]

# %% [markdown]
# ## 1. The teacher and the arms

# %%
teachers = ctx.prepare_teachers()
display(teachers)


def kd(divergence: str, temperature: float, gamma: float = 0.0) -> dict:
    return {"distill.params": {"divergence": divergence, "temperature": temperature, "weight": 1.0,
                               "alt_weight": gamma, "match": "every_step"}}


ARMS = {"no_kd": {"method": "scratch", "distill.params": {}}, "kl": kd("kl", 1.0), "cs": kd("cs", 1.0),
        "cs_alt": kd("cs", 1.0, GAMMA)}
GRID = {f"{d}_T{t:g}": kd(d, t) for d in ("kl", "cs") for t in TEMPERATURES if t != 1.0}
for arm, overrides in {**ARMS, **GRID}.items():
    print(f"{arm:<10} {overrides}")
frame = ctx.run_arms({**ARMS, **GRID}, verbose=False, workers=WORKERS)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s of run time")

MIOU, RMSE, F1 = "test/student_mIoU", "test/student_rmse", "test/student_edge_f1"
DELTA = "test/student_delta_mtl"
METRICS = {"mIoU": MIOU, "depth RMSE": RMSE, "edge F1": F1}
baseline = frame[frame["arm"] == "no_kd"].set_index("seed")
frame[DELTA] = [delta_mtl({k: row[k] for k in METRICS.values()}, {k: baseline.loc[row["seed"], k] for k in METRICS.values()},
                          {RMSE}) for row in frame.to_dict("records")]
teacher_row = frame.iloc[0]
print(f"teacher (test): mIoU {teacher_row['test/teacher_mIoU']:.4f}, depth RMSE {teacher_row['test/teacher_rmse']:.4f}, "
      f"edge F1 {teacher_row['test/teacher_edge_f1']:.4f}")
display(frame.pivot_table(index="seed", columns="arm", values=[MIOU, RMSE, F1, DELTA]).round(4))

# %% [markdown]
# ## 2. The four arms
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against the baseline: the per-seed
# paired difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within
# noise*. Lower is better for RMSE. `cs` and `cs_alt` are also compared with `kl` directly.

# %%
main = frame[frame["arm"].isin(ARMS)]
vs_none = {label: summarize(main, metric, baseline="no_kd") for label, metric in {**METRICS, "Δ_MTL": DELTA}.items()}
vs_kl = {label: summarize(main[main["arm"] != "no_kd"], metric, baseline="kl")
         for label, metric in {**METRICS, "Δ_MTL": DELTA}.items()}
for label in vs_none:
    display(Markdown(f"**{label}** (baseline `no_kd`)"), format_summary(vs_none[label]))
    display(Markdown(f"**{label}** (baseline `kl`)"), format_summary(vs_kl[label]))
order = list(ARMS)
arm_comparison(main, MIOU, order=order, title=f"test mIoU: mean ± std over {len(seeds)} seed(s), points = seeds").show()
arm_comparison(main, DELTA, order=order, title="Δ_MTL against no_kd (mIoU, depth RMSE, edge F1)").show()
paired_differences(main, "no_kd", MIOU, order=order[1:],
                   title="paired difference of test mIoU vs no_kd (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 3. Temperature sensitivity
#
# Each metric against T for KL and CS (mean ± std over seeds). The spread of an arm family is,
# per seed, the range (max − min) of a metric over T ∈ {1, 4, 16}; the claim "CS varies less"
# compares CS's spread with KL's, paired by seed.

# %%
grid = frame[frame["arm"].isin(["kl", "cs", *GRID])].copy()
grid["divergence"] = grid["arm"].str.split("_").str[0]
grid["T"] = [float(a.split("_T")[1]) if "_T" in a else 1.0 for a in grid["arm"]]
for label, metric in {**METRICS, "Δ_MTL": DELTA}.items():
    fig = go.Figure()
    for divergence, part in grid.groupby("divergence"):
        stats = part.groupby("T")[metric].agg(["mean", "std"]).reset_index()
        fig.add_scatter(x=stats["T"], y=stats["mean"], error_y={"array": stats["std"].fillna(0)}, mode="lines+markers",
                        name=divergence)
    fig.update_layout(title=f"test {label} against the temperature T", xaxis_type="log", xaxis_title="T",
                      yaxis_title=label, template="plotly_white").show()
spread_rows = []
for (divergence, seed), part in grid.groupby(["divergence", "seed"]):
    spread_rows.append({"arm": f"{divergence} spread", "seed": seed,
                        **{f"spread/{m}": part[m].max() - part[m].min() for m in (*METRICS.values(), DELTA)}})
spread = pd.DataFrame(spread_rows)
spreads = {label: summarize(spread, f"spread/{metric}", baseline="kl spread")
           for label, metric in {**METRICS, "Δ_MTL": DELTA}.items()}
for label, summary in spreads.items():
    display(Markdown(f"**Spread of {label} over T** (baseline: KL's spread)"), format_summary(summary))

# %% [markdown]
# ## 4. Predicted maps
#
# The last seed's first test probe image: true, teacher and student maps and their disparity,
# for the `no_kd` and `cs_alt` students (segmentation, depth, edge probabilities).

# %%
def probe(run_dir: str) -> dict[str, np.ndarray]:
    run = open_run(run_dir)
    names = [n for n in run.artifacts("dense_map")["name"] if n.startswith("dense/test/")]
    maps = {n.rsplit("/", 1)[-1].removesuffix("_mask"): run.load_artifact(n)[0].astype(float) for n in names}
    image = run.images([int(run.instances("test", columns=["instance_id"])["instance_id"].min())])
    return {"image": next(iter(image.values())), **maps}


class_names = ["background", "0", "1", "2"]
for arm in ("no_kd", "cs_alt"):
    row = frame[(frame["arm"] == arm) & (frame["seed"] == seeds[-1])].iloc[0]
    maps = probe(row["run_dir"])
    dense_panels({k: maps[k] for k in ("image", "true", "teacher", "student", "disparity") if k in maps}, class_names,
                 title=f"{arm}: segmentation, true / teacher / student, KL disparity").show()
    for output in ("depth", "edges"):
        dense_panels({k: maps[k] for k in (f"true_{output}", f"teacher_{output}", f"student_{output}",
                                           f"{output}_disparity") if k in maps}, class_names,
                     title=f"{arm}: {output}, true / teacher / student, |teacher − student|").show()

# %% [markdown]
# ## 5. Verdict in words
#
# **What the miniature can say:** on small digit scenes with a 13× smaller student, whether
# distilling a multi-task teacher helps the student's three tasks beyond the noise of 3 seeds,
# whether the CS divergence does better than KL at the same temperature, whether the inter-task
# adapters add anything, and how much each divergence's result moves with T. **What it cannot
# say:** anything about NYUD-v2 / PASCAL-Context scale, real depth, or the paper's numbers; the
# axes and the alternative match are our reconstruction; with three seeds small effects stay
# within noise.

# %%
describe = reporting.describe
n = len(seeds)
lines = [describe(vs_none["mIoU"], arm, f"{arm} − no_kd, mIoU") for arm in ("kl", "cs", "cs_alt")]
lines += [describe(vs_none["Δ_MTL"], arm, f"{arm} − no_kd, Δ_MTL") for arm in ("kl", "cs", "cs_alt")]
lines += [describe(vs_kl[label], "cs", f"cs − kl, {label}", lower_is_better=(label == "depth RMSE"))
          for label in vs_kl]
lines.append(describe(vs_kl["Δ_MTL"], "cs_alt", "cs_alt − kl, Δ_MTL"))
if n < 2:
    claim_text = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    cs_beats_kl = reporting.claim(vs_kl["Δ_MTL"], "cs")
    cs_beats_kl_miou = reporting.claim(vs_kl["mIoU"], "cs")
    less = {label: reporting.claim(spreads[label], "cs spread", lower_is_better=True) for label in spreads}
    alt = reporting.claim(summarize(main[main["arm"].isin(["cs", "cs_alt"])], DELTA, baseline="cs"), "cs_alt")
    lines += [describe(spreads[label], "cs spread", f"CS spread − KL spread over T, {label}", words=("smaller", "larger"),
                       lower_is_better=True) for label in spreads]
    claim_text = (f"Claim 'CS beats KL' (Δ_MTL at T = 1): {cs_beats_kl}; on mIoU: {cs_beats_kl_miou}. "
                  "Claim 'CS varies less across T': " + ", ".join(f"{k} {v}" for k, v in less.items()) + ". "
                  f"Inter-task matching over CS alone (Δ_MTL): {alt}.")
means = main.groupby("arm")[[MIOU, RMSE, F1, DELTA]].mean()
verdict_text = (f"Over {n} seed(s): " + "; ".join(lines) + ". " + claim_text + " Means (mIoU / RMSE / edge F1 / Δ_MTL): "
                + ", ".join(f"{a} {means.loc[a, MIOU]:.3f} / {means.loc[a, RMSE]:.3f} / {means.loc[a, F1]:.3f} / "
                            f"{means.loc[a, DELTA]:+.3f}" for a in ARMS)
                + f". Teacher: {teacher_row['test/teacher_mIoU']:.3f} / {teacher_row['test/teacher_rmse']:.3f} / "
                  f"{teacher_row['test/teacher_edge_f1']:.3f}.")
display(Markdown(verdict_text))

# %% [markdown]
# ## 6. Save the results

# %%
load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # the CPU may be shared: say how busy it was
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)
summaries = [(vs_none[label], "no_kd") for label in vs_none] + [(vs_kl[label], "kl") for label in vs_kl]
summaries += [(spreads[label], "kl spread") for label in spreads] if n >= 2 or budget == "smoke" else []
ctx.save(results_path, summaries,
         title="CS-MTL-KD: one multi-task teacher (segmentation, depth, edges) into a 13x smaller multi-task student "
               "with the Cauchy-Schwarz divergence and inter-task adapters, digit scenes (reconstruction: the "
               "divergence's axes, the alternative match on head outputs, no T^2 for CS)",
         notes=verdict_text.replace("**", "") + f" Wall time {ctx.wall_s:.0f} s with {WORKERS} run(s) at a time; "
               f"load average (1, 5, 15 min) at the end: {load}; CPU time of the notebook and its workers {cpu:.0f} s.")
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {ctx.wall_s:.0f} s; load average {load}; CPU {cpu:.0f} s")
