# %% [markdown]
# # SAM: dense indoor prediction from sound by aligned cross-modal distillation, in miniature
#
# **The method (paper 9).** A vision teacher sees the room; an audio student only hears it, and
# both must predict dense maps (depth, semantics). Distilling the teacher's feature maps into the
# student "as they are" fails because the student's audio features are indexed by *time*, the
# teacher's by *space*: matching position n of one to position n of the other pairs unrelated
# things. SAM gives the student learnable **spatial queries**, one per teacher position, that
# cross-attend over the audio tokens of a layer l: Ŝ_l = CrossAttn(Q_l, K = V = A_l). Ŝ_l is
# aligned with the teacher by construction; an adapter maps it to the teacher's width, it is
# matched to the teacher at one or more layers, and the student's decoder consumes it as well:
#
#     L = L_task + λ · Σ_l ‖adapter(Ŝ_l) − sg(T_l)‖²,   λ = 1.
#
# In the engine: task `echo_depth` (`kd_engine/tasks/echo_depth.py`), dataset `room_echoes`
# (`kd_engine/data/room_echoes.py`), models `panorama_cnn` and `echo_cnn` with its
# `QueryAligner` (`kd_engine/models/echo_cnn.py`), the matching loss
# (`kd_engine/losses/alignment.py`), methods `scratch` and `direct_kd`
# (`kd_engine/methods/echo_base.py`) and `sam` (`kd_engine/methods/sam.py`).
#
# **Reconstruction.** No code was published and the aligner's design is *inferred* from the
# paper's summary: one attention head, queries that are plain learned vectors, a learned
# embedding of each audio token's time position added to keys and values (so a query can read
# *when* an echo came back, which is the depth), and an additive 1×1-convolution fusion of Ŝ
# into the decoder's input. The rooms, the echo model and the 1-D networks are our miniature.
#
# **The miniature** (`configs/sam_echoes.yaml`): 2000 rooms (1600 train, 400 test), each a
# 3–8 m rectangle with 0–3 box obstacles and a listener at a random free spot. Per azimuth (64
# bins) the targets are the depth and whether the first surface is a wall or an obstacle.
# Teacher input: the panorama (noisy depth and wall/obstacle channels per azimuth). Student
# input: binaural echoes, 2 × 256 time bins; every azimuth adds a spike at its round-trip delay
# 2d/c with amplitude ∝ reflectivity/d², scaled by left/right gains that depend on azimuth (and
# a small interaural delay), plus noise decaying over time. Echo time is **not** azimuth: a time
# bin mixes every direction at that distance. Teacher: `panorama_cnn` (3 circular 1-D
# convolutions, width 32), trained once and cached. Student: `echo_cnn` — 1-D convolutions over
# time give 64 (`stage1`) and 32 (`stage2`) audio tokens of width 32; a learned linear `neck`
# maps the stage-2 tokens to a (32 × 64 azimuth) map and two circular convolutions decode it.
# SAM adds 64 azimuth queries of width d = 32 per aligned stage. Adam 5e-3, batch 64, cosine
# schedule, 10 epochs.
#
# **Arms** (same seeds: the seed fixes the student's initialisation and the batch order; every
# seed sees the same rooms and the same teacher):
#
# * `no_kd`: the student alone (no aligner), **the baseline**;
# * `direct_kd`: the same student, its time-indexed `stage2` map (32 tokens) resized by linear
#   interpolation to the 64 azimuths, a 1×1 adapter, MSE to the teacher's `layer2` map — the
#   naive cross-modal feature KD, deliberately misaligned (that is the baseline, not a bug);
# * `sam_1`: queries on `stage2` matched to the teacher's `layer2` (λ = 1);
# * `sam_2`: queries on `stage1` and `stage2` matched to `layer1` and `layer2` (λ = 1);
# * `control`: the `sam_1` architecture with λ = 0 — the same queries feed the decoder, nothing is
#   distilled; `control_2`: the same for `sam_2` (two aligners, λ = 0). Because Ŝ feeds the
#   decoder, a gain of SAM over `no_kd` may be extra capacity; only SAM against its own control
#   (`sam_1` − `control`, `sam_2` − `control_2`) speaks for the distillation.
#
# **Claims to test:** depth RMSE ordering SAM < direct KD < no KD (direct KD may not help at
# all); SAM better than its own λ = 0 control. **Metrics:** depth RMSE (m) and abs-rel over every
# test azimuth, wall/obstacle mIoU from one confusion matrix over the test azimuths.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, 300 rooms (plumbing check; no verdict). `full`: 3 seeds,
# 10 epochs, 2000 rooms, two runs at a time; its wall time is measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs, 300 rooms; "full": 3 seeds, 10 epochs, 2000 rooms
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import os
import resource
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import yaml
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.config import load_raw
from kd_engine.experiment import (apply_budget, budget_settings, format_summary, prepare_teachers, repo_file,
                                  run_jobs, save_results, summarize, work_dirs)
from kd_engine.store import open_run
from workbench.figures import arm_comparison, paired_differences
from workbench.figures.echo import azimuth_depth_polar, echo_attention_map

started = time.perf_counter()
settings = budget_settings(budget, seeds=3, epochs=None)
seeds = settings["seeds"]
WORKERS = 1 if budget == "smoke" else 2
work, runs_dir, cache_dir = work_dirs(work_dir, "p09-sam")
base = apply_budget(load_raw(repo_file("configs/sam_echoes.yaml")), settings)
if budget == "smoke":
    base["data"]["params"].update(rooms=300, test_rooms=75)
base["record"] = {"instances": True, "eval_instances": True, "attention_maps": 16, "tensorboard": False}
print(f"budget {budget}: seeds {seeds}, epochs {base['epochs']}, teacher epochs {base['teacher']['train']['epochs']}, "
      f"rooms {base['data']['params']}, {base['threads']} torch thread(s) per run, {WORKERS} run(s) at a time")
print(f"runs: {runs_dir}  (browse them with: kdw dashboard --runs-dir {runs_dir})")

# %% [markdown]
# ## 1. The teacher, the config and the arms

# %%
teachers = prepare_teachers(base, seeds[:1], runs_dir, cache_dir)  # one teacher: the rooms are fixed
display(teachers)
print(yaml.safe_dump({k: base[k] for k in ("data", "teacher", "student", "distill", "optimizer", "epochs")},
                     sort_keys=False))
sam_params = base["distill"]["params"]
ARMS = {"no_kd": {"method": "scratch", "student.params.aligned": [], "distill.params": {}},
        "direct_kd": {"method": "direct_kd", "student.params.aligned": [],
                      "distill.params": {"student_layer": "stage2", "teacher_layer": "layer2", "weight": 1.0}},
        "sam_1": {},
        "sam_2": {"student.params.aligned": ["stage1", "stage2"],
                  "distill.params": {"teacher_layers": ["layer1", "layer2"], "weight": 1.0}},
        "control": {"distill.params": {**sam_params, "weight": 0.0}},
        "control_2": {"student.params.aligned": ["stage1", "stage2"],
                      "distill.params": {"teacher_layers": ["layer1", "layer2"], "weight": 0.0}}}
CONTROLS = {"sam_1": "control", "sam_2": "control_2"}  # each SAM arm against its own architecture at λ = 0
for arm, overrides in ARMS.items():
    print(f"{arm:<10} {overrides}")

# %%
jobs = [(base, arm, overrides, seed) for seed in seeds for arm, overrides in ARMS.items()]
frame = run_jobs(jobs, runs_dir, cache_dir, verbose=False, workers=WORKERS)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s of run time")
RMSE, REL, MIOU = "test/student_rmse", "test/student_abs_rel", "test/student_mIoU"
teacher_row = frame.iloc[0]
print(f"teacher on the test rooms: RMSE {teacher_row['test/teacher_rmse']:.4f} m, abs-rel "
      f"{teacher_row['test/teacher_abs_rel']:.4f}, mIoU {teacher_row['test/teacher_mIoU']:.4f}")
display(frame.pivot_table(index="seed", columns="arm", values=RMSE).round(4))

# %% [markdown]
# ## 2. Depth and semantics per arm
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Paired by seed against a baseline:
# the difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within
# noise*. Baselines: `no_kd` for every arm; then `direct_kd` for SAM (the ordering claim) and
# each SAM arm's own λ = 0 control (architecture against distillation). At this budget the students may never
# call an azimuth an obstacle (obstacle IoU 0, 13% of the azimuths): then every student's mIoU is
# half its wall IoU, flat across arms, and says nothing about distillation; depth is the signal.

# %%
METRICS = {"depth RMSE (m)": RMSE, "abs-rel": REL, "mIoU": MIOU}
LOWER = {RMSE: True, REL: True, MIOU: False}
vs_nokd = {label: summarize(frame, metric, baseline="no_kd") for label, metric in METRICS.items()}
vs_control = {arm: {label: summarize(frame[frame["arm"].isin([arm, control])], metric, baseline=control)
                    for label, metric in METRICS.items()} for arm, control in CONTROLS.items()}
vs_direct = summarize(frame[frame["arm"].isin(["direct_kd", "sam_1", "sam_2"])], RMSE, baseline="direct_kd")
for label, summary in vs_nokd.items():
    display(Markdown(f"**{label}** (baseline `no_kd`)"), format_summary(summary))
for arm, control in CONTROLS.items():
    for label, summary in vs_control[arm].items():
        display(Markdown(f"**{label}, {arm} against its λ = 0 control `{control}`**"), format_summary(summary))
display(Markdown("**depth RMSE, SAM against direct KD**"), format_summary(vs_direct))
order = list(ARMS)
arm_comparison(frame, RMSE, order=order, title=f"test depth RMSE (m): mean ± std over {len(seeds)} seed(s), points = seeds").show()
paired_differences(frame, "no_kd", RMSE, order=order,
                   title="paired difference of depth RMSE vs no_kd (band: mean ± 2·std/√n; below 0 is better)").show()
arm_comparison(frame, MIOU, order=order, title="test wall/obstacle mIoU: mean ± std over seeds").show()

# %% [markdown]
# ## 3. What the queries attend to
#
# The cross-attention of the 64 azimuth queries over the 32 stage-2 echo-time tokens, for one
# test room (last seed), with each azimuth's true round-trip delay drawn over it (× marks, in
# token units 32·d/12 m). If the queries learned to read the echo of their own direction, the
# attention follows the marks: the delay structure. To measure it over the 16 probe rooms, we
# take each query's attention-weighted mean token, Σ_n p_n·n, and correlate it with the true
# delay token across rooms and azimuths (Pearson r; 0 means no delay structure).

# %%
seed_show = seeds[-1]


def run_of(arm: str, seed: int = seed_show):
    return open_run(frame[(frame["arm"] == arm) & (frame["seed"] == seed)]["run_dir"].iloc[0])


def delay_correlation(run) -> float:
    attention = run.load_artifact("echo/test/attention_stage2").astype(float)  # (rooms, A, N)
    true = run.load_artifact("echo/test/true_depth").astype(float)
    tokens = attention.shape[-1]
    expected = (attention * np.arange(tokens)).sum(-1)
    return float(np.corrcoef(expected.ravel(), (tokens * true / run.meta()["max_range"]).ravel())[0, 1])


corr_rows = [{"arm": arm, "seed": seed, "test/delay_correlation": delay_correlation(run_of(arm, seed))}
             for arm in ("sam_1", "sam_2", "control", "control_2") for seed in seeds]
correlations = pd.DataFrame(corr_rows)
vs_control_delay = {arm: summarize(correlations[correlations["arm"].isin([arm, control])], "test/delay_correlation",
                                   baseline=control) for arm, control in CONTROLS.items()}
for arm, summary in vs_control_delay.items():
    display(Markdown(f"**Delay structure (stage 2): correlation of the attention's mean token with the true delay, "
                     f"{arm} against `{CONTROLS[arm]}`**"), format_summary(summary))
for arm in ("sam_1", "control"):
    run = run_of(arm)
    attention = run.load_artifact("echo/test/attention_stage2")
    true = run.load_artifact("echo/test/true_depth")
    echo_attention_map(attention[0], true[0], run.meta()["max_range"],
                       title=f"{arm}: stage2 cross-attention, azimuth query x echo time, first test room (x: true delay)").show()

# %% [markdown]
# ## 4. One room: truth, teacher and students per azimuth
#
# Depth per azimuth (polar, metres; 0° along +x, counter-clockwise; squares: azimuths called an
# obstacle) for the first test room of the last seed.

# %%
for arm in ("no_kd", "direct_kd", "sam_1", "control"):
    run = run_of(arm)
    maps = {role: run.load_artifact(f"echo/test/{key}_depth")[0]
            for role, key in (("truth", "true"), ("teacher", "teacher"), ("student", "student"))}
    labels = {role: run.load_artifact(f"echo/test/{key}_label")[0]
              for role, key in (("truth", "true"), ("teacher", "teacher"), ("student", "student"))}
    azimuth_depth_polar(maps, labels, title=f"{arm}: depth per azimuth, first test room (m)").show()

# %% [markdown]
# ## 5. The alignment loss per room during training
#
# The matching loss ‖adapter(Ŝ) − T‖² recorded per training room: SAM minimises it; the control
# records it without training on it (its adapter stays at its initialisation, so its level says
# how far an untrained read of Ŝ is from the teacher, not how aligned Ŝ is).

# %%
curves = []
for row in frame[frame["arm"].isin(["sam_1", "sam_2", "control", "control_2"])].itertuples():
    rows = open_run(row.run_dir).instances(split="train", columns=["epoch", "align_loss"])
    curves.append(rows.groupby("epoch")["align_loss"].mean().reset_index().assign(arm=row.arm, seed=row.seed))
curves = pd.concat(curves, ignore_index=True)
fig = go.Figure()
for arm, part in curves.groupby("arm"):
    curve = part.groupby("epoch")["align_loss"].mean()
    fig.add_scatter(x=curve.index.tolist(), y=curve.tolist(), mode="lines+markers", name=arm)
fig.update_layout(title="mean alignment loss per training room (all seeds)", xaxis_title="epoch",
                  yaxis_title="Σ_l mean (adapter(Ŝ_l) − T_l)²", template="plotly_white").show()

# %% [markdown]
# ## 6. Verdict in words
#
# **What the miniature can say:** whether, for 1-D rooms heard by two ears, matching
# query-aligned audio features to a panorama teacher lowers the student's depth error beyond the
# noise of 3 seeds, against no KD, against naive (misaligned) feature KD, and against the same
# architecture without distillation. **What it cannot say:** anything about the paper's setting
# (real binaural recordings, RGB-D teachers, 2-D and 3-D outputs, its numbers), or about the
# aligner's true design, which is inferred; with 3 seeds only differences of a few standard
# deviations resolve. The teacher sees an almost noise-free panorama, so its features carry little
# beyond the labels the student already trains on; a miniature with a richer teacher (or unlabelled
# rooms for distillation) could show more.

# %%
n = len(seeds)
describe = reporting.describe
lines = [describe(vs_nokd["depth RMSE (m)"], arm, f"{arm} − no_kd, depth RMSE", words=("lower", "higher"),
                  lower_is_better=True) for arm in ("direct_kd", "sam_1", "sam_2", "control", "control_2")]
lines += [describe(vs_control[arm][label], arm, f"{arm} − {CONTROLS[arm]}, {label}",
                   lower_is_better=LOWER[METRICS[label]], words=("better", "worse"))
          for label in METRICS for arm in CONTROLS]
lines += [describe(vs_direct, arm, f"{arm} − direct_kd, depth RMSE", words=("lower", "higher"), lower_is_better=True)
          for arm in ("sam_1", "sam_2")]
lines += [describe(vs_nokd["mIoU"], arm, f"{arm} − no_kd, mIoU") for arm in ("direct_kd", "sam_1")]
lines += [describe(vs_control_delay[arm], arm, f"{arm} − {CONTROLS[arm]}, delay correlation of the attention")
          for arm in CONTROLS]
if n < 2:
    verdict = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    rmse_claims = {arm: reporting.claim(vs_nokd["depth RMSE (m)"], arm, lower_is_better=True)
                   for arm in ("direct_kd", "sam_1", "sam_2")}
    over_direct = {arm: reporting.claim(vs_direct, arm, lower_is_better=True) for arm in ("sam_1", "sam_2")}
    distilled = {arm: reporting.claim(vs_control[arm]["depth RMSE (m)"], arm, lower_is_better=True)
                 for arm in CONTROLS}
    supported = [arm for arm, c in distilled.items() if c == "holds"]
    verdict = (f"Claim 'SAM < no KD (RMSE)': sam_1 {rmse_claims['sam_1']}, sam_2 {rmse_claims['sam_2']}. "
               f"Claim 'direct KD < no KD': {rmse_claims['direct_kd']}. "
               f"Claim 'SAM < direct KD': sam_1 {over_direct['sam_1']}, sam_2 {over_direct['sam_2']}. "
               f"SAM against its own λ = 0 control (RMSE): sam_1 {distilled['sam_1']}, sam_2 {distilled['sam_2']}. ")
    if supported:
        verdict += (f"The distillation claim is supported for {', '.join(supported)}: the gain is not only the "
                    "extra capacity of the query path.")
    else:
        verdict += ("SAM's gain over its λ = 0 control is not resolved (within noise or worse): the distillation "
                    "claim is not supported by this miniature; any gain over no_kd can be the architecture.")
arm_means = frame.groupby("arm")[[RMSE, REL, MIOU]].mean()
verdict_text = (f"Over {n} seed(s): " + "; ".join(lines) + ". " + verdict + " Means (RMSE m / abs-rel / mIoU): "
                + ", ".join(f"{a} {arm_means.loc[a, RMSE]:.4f} / {arm_means.loc[a, REL]:.4f} / "
                            f"{arm_means.loc[a, MIOU]:.4f}" for a in ARMS)
                + f"; teacher {teacher_row['test/teacher_rmse']:.4f} / {teacher_row['test/teacher_abs_rel']:.4f} / "
                  f"{teacher_row['test/teacher_mIoU']:.4f}.")
display(Markdown(verdict_text))

# %% [markdown]
# ## 7. Save the results

# %%
wall = time.perf_counter() - started
load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # the CPU may be shared: say how busy it was
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # this kernel and its finished worker processes
save_results(results_path, "p09_sam",
             [(vs_nokd[label], "no_kd") for label in METRICS]
             + [(vs_control[arm][label], control) for arm, control in CONTROLS.items() for label in METRICS]
             + [(vs_direct, "direct_kd")] + [(vs_control_delay[arm], control) for arm, control in CONTROLS.items()],
             budget, seeds, wall,
             title="SAM: learnable azimuth queries cross-attending over binaural echo tokens, matched to a "
                   "panorama teacher (depth RMSE / abs-rel / wall-obstacle mIoU per azimuth; reconstruction: the "
                   "aligner's design, the rooms and echo model)",
             notes=verdict_text.replace("**", "") + f" Wall time {wall:.0f} s with {WORKERS} run(s) at a time; "
                   f"load average (1, 5, 15 min) at the end: {load}; CPU time of the notebook and its "
                   f"workers {cpu:.0f} s (on 2 otherwise idle cores the wall time would be about half that).")
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {wall:.0f} s; load average {load}; CPU {cpu:.0f} s")
