# %% [markdown]
# # MemKD: memory-guided distillation for unsupervised anomaly detection, in miniature
#
# **The method.** In student–teacher anomaly detection a frozen teacher (trained for something
# else) and a student of the same shape see only normal images; the student learns to reproduce
# the teacher's features there, L_KD = mean_levels mean_p (1 − cos(F_S,p, F_T,p)). At test time
# the per-position disagreement Σ_levels (1 − cos) is the anomaly map, and its maximum is the
# image's score. The weakness MemKD (ICCV 2023) targets: the student generalises too well and
# also reproduces the teacher on anomalies, so the map stays quiet ("normality forgetting"). MemKD
# puts a key–value **normality memory** inside the student: after a level, L slots (keys K,
# values V) are read by cosine attention from each position's feature, a = softmax_l cos(K_l, x_p),
# r_p = Σ_l a_l V_l, and the next layer receives a mix of x and the recall r. The memory is taught
# on N fixed normal exemplars E: L_NM = ½·mean_p ‖n(F_T(E)) − n(mem(F_T(E)))‖² (recall the
# teacher's normal features), L_ORTH = mean_{i,j} cos(K_i, V_j), and
# L = L_KD + 0.1·L_NM + 0.1·L_ORTH. In the engine: task `anomaly` (`kd_engine/tasks/anomaly.py`),
# dataset `digits_oneclass`, methods `stpm` (`kd_engine/methods/anomaly_base.py`) and `memkd`
# (`kd_engine/methods/memkd.py`), the memory block `kd_engine/parts/kv_memory.py`.
#
# **Reconstruction** (our concrete choices where the method's description leaves room):
# the next layer gets fuse(concat(x, r)) through a 1×1 convolution that starts as the identity
# on x (the public code widens the next layer instead); the image score is the map's maximum;
# the pasted-patch anomalies and their pixel masks are our own miniature of defect images; the
# orthogonality term is minimised as written (a mean cosine, which can go below zero).
#
# **The miniature** (`configs/memkd_digits.yaml`): scikit-learn's 8×8 digits, cut once (fixed,
# not by seed) into two halves stratified by digit. The teacher, a ResNet of width 16, is a
# 10-way classifier trained once on one half (`digits_teacher_half`) and cached. The other half
# serves one-class problems: for a normal digit k, about 65% of its ~90 images train the student
# (normal only), the rest are the normal test images; as many images of other digits, and as
# many copies of the normal test images with a 3×3 square pasted in from another digit
# (pixel ground truth: the square), are the anomalies. Teacher and student taps: `layer1`
# (8×8×16) and `layer2` (4×4×32); MemKD's memory (16 slots, 8 exemplars) sits after `layer1`.
# Adam 5e-3, batch 16.
#
# **Arms** (per normal digit; the same seeds, which fix the split, the exemplars and the
# student's initialisation; one teacher for all):
#
# * `stpm`: the student–teacher pair without memory, **the baseline**;
# * `memkd`: the normality memory with L_NM and L_ORTH;
# * `memory_only`: the same memory trained by L_KD alone (weights of L_NM and L_ORTH = 0), the
#   control that separates "more parameters in the student" from "a memory taught normality";
# * `memkd_sharp`: MemKD with the attention logits divided by τ = 0.1 (our addition, not the
#   method's setting): with raw cosines in [−1, 1] a 16-slot softmax is nearly uniform, so every
#   position may recall almost the same mixture; this arm asks whether a sharper read matters.
#
# **Claim to test:** MemKD ≥ the baseline in image AUROC, most clearly where anomalies resemble
# normal digits (here: the pasted patches, a normal digit with a small change).
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, one digit (plumbing check; no verdict). `full`: 3 seeds,
# 30 epochs, normal digits {1, 7, 8}, two runs at a time; its wall time is measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs, one digit; "full": 3 seeds, 30 epochs, three digits
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import os
import resource
import time
from functools import partial

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import yaml
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.config import load_raw
from kd_engine.experiment import (apply_budget, budget_settings, format_summary, prepare_teachers, repo_file,
                                  run_jobs, save_results, summarize, work_dirs)
from kd_engine.reporting import claim
from kd_engine.store import open_run
from workbench.figures import anomaly_map_grid, arm_comparison, paired_differences, score_histogram

started = time.perf_counter()
settings = budget_settings(budget, seeds=3, epochs=30)
seeds = settings["seeds"]
CLASSES = [8] if budget == "smoke" else [1, 7, 8]
WORKERS = 1 if budget == "smoke" else 2
work, runs_dir, cache_dir = work_dirs(work_dir, "p18-memkd")
base = apply_budget(load_raw(repo_file("configs/memkd_digits.yaml")), settings)
base["record"] = {"instances": True, "eval_instances": True, "attention_maps": 0, "feature_probe_size": 16,
                  "tensorboard": False}
print(f"budget {budget}: seeds {seeds}, normal digits {CLASSES}, epochs {base['epochs']}, "
      f"teacher epochs {base['teacher']['train']['epochs']}, {base['threads']} torch thread(s) per run, "
      f"{WORKERS} run(s) at a time")
print(f"runs: {runs_dir}  (browse them with: kdw dashboard --runs-dir {runs_dir})")

# %% [markdown]
# ## 1. The teacher, the config and the arms

# %%
teachers = prepare_teachers(base, seeds[:1], runs_dir, cache_dir)  # one teacher: its split seed is pinned
display(teachers)
print(yaml.safe_dump({k: base[k] for k in ("data", "student", "distill", "optimizer", "epochs")}, sort_keys=False))
memkd_params = base["distill"]["params"]
ARMS = {"stpm": {"method": "stpm", "distill.params": {"layers": memkd_params["layers"]}},
        "memkd": {},
        "memory_only": {"distill.params": {**memkd_params, "nm_weight": 0.0, "orth_weight": 0.0}},
        "memkd_sharp": {"distill.params": {**memkd_params, "temperature": 0.1}}}
jobs = [(base, f"{arm}@{k}", {**overrides, "data.params.normal_class": k}, seed)
        for seed in seeds for k in CLASSES for arm, overrides in ARMS.items()]
for arm, overrides in ARMS.items():
    print(f"{arm:<12} {overrides}")

# %%
frame = run_jobs(jobs, runs_dir, cache_dir, verbose=False, workers=WORKERS)
frame["method"] = frame["arm"].str.split("@").str[0]
frame["digit"] = frame["arm"].str.split("@").str[1].astype(int)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s of run time")
IMG, PIX = "test/student_image_auroc", "test/student_pixel_auroc"
display(frame.pivot_table(index=["digit", "seed"], columns="method", values=IMG).round(4))

# %% [markdown]
# ## 2. Image AUROC per normal digit
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against the baseline `stpm` of the
# same digit: the per-seed paired difference, mean ± std; *resolved* only if
# |mean diff| > 2·std/√n, otherwise *within noise*.

# %%
per_digit = {k: summarize(frame[frame["digit"] == k], IMG, baseline=f"stpm@{k}") for k in CLASSES}
for k in CLASSES:
    display(Markdown(f"**Image AUROC, normal digit {k}** (baseline `stpm@{k}`)"), format_summary(per_digit[k]))
order = [f"{a}@{k}" for k in CLASSES for a in ARMS]
arm_comparison(frame, IMG, order=order,
               title=f"test image AUROC per normal digit: mean ± std over {len(seeds)} seed(s), points = seeds").show()

# %% [markdown]
# ## 3. Averaged over the digits, per anomaly kind, and at the pixel level
#
# Per seed, each arm's AUROC averaged over the normal digits, then the reporting rule over seeds.
# `auroc_other_digit` scores normal images against images of other digits; `auroc_pasted_patch`
# against normal images with a pasted 3×3 square (the anomalies that resemble normality most).
# Pixel AUROC ranks the map's pixels of normal and pasted images against the pasted squares.

# %%
METRICS = {"image AUROC": IMG, "AUROC other digits": "test/student_auroc_other_digit",
           "AUROC pasted patches": "test/student_auroc_pasted_patch", "pixel AUROC": PIX}
means = frame.groupby(["method", "seed"], sort=False)[list(METRICS.values())].mean().reset_index()
means = means.rename(columns={"method": "arm"})
averaged = {label: summarize(means, metric, baseline="stpm") for label, metric in METRICS.items()}
vs_control = summarize(means[means["arm"] != "stpm"], IMG, baseline="memory_only")
for label, summary in averaged.items():
    display(Markdown(f"**{label}, mean over digits {CLASSES}** (baseline `stpm`)"), format_summary(summary))
display(Markdown("**Image AUROC, memkd against the memory-only control**"), format_summary(vs_control))
pivot = means.pivot_table(index="seed", columns="arm", values=list(METRICS.values()))
GAP = "test/gain_pasted_minus_gain_other"
gain = {kind: pivot[(METRICS[f"AUROC {kind}"], "memkd")] - pivot[(METRICS[f"AUROC {kind}"], "stpm")]
        for kind in ("other digits", "pasted patches")}
gaps = pd.concat([pd.DataFrame({"arm": f"gain on {kind}", "seed": pivot.index, GAP: values.to_numpy()})
                  for kind, values in gain.items()], ignore_index=True)
gap_summary = summarize(gaps, GAP, baseline="gain on other digits")
display(Markdown("**MemKD's gain on pasted patches against its gain on other digits** (paired by seed)"),
        format_summary(gap_summary))
paired_differences(means, "stpm", IMG, order=["memkd", "memory_only", "memkd_sharp"],
                   title="paired difference of mean image AUROC vs stpm (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 4. Scores, maps and the memory
#
# The image scores of the last seed's test images (normal against each kind of anomaly), the
# anomaly maps of a few of them (green: the pasted square), and the mean entropy of the memory
# reads per epoch (log 16 ≈ 2.77 nats: every position reads all slots equally; lower: positions
# address particular slots).

# %%
k_show, seed_show = CLASSES[-1], seeds[-1]
for method in ("stpm", "memkd"):
    run_dir = frame[(frame["arm"] == f"{method}@{k_show}") & (frame["seed"] == seed_show)]["run_dir"].iloc[0]
    run = open_run(run_dir)
    test = run.instances(split="test")
    score_histogram(test, title=f"{method}: image scores (map maximum, reconstruction) on digit {k_show}'s test set, seed {seed_show}").show()
    maps, masks = run.load_artifact("anomaly_maps/test").astype(float), run.load_artifact("anomaly_masks/test")
    pick = np.concatenate([np.flatnonzero(test["kind"].to_numpy() == kind)[:3] for kind in (0, 1, 2)])
    ids = test["instance_id"].to_numpy()[pick]
    images = run.images(ids.tolist())
    titles = [f"#{i} {['normal', 'digit', 'pasted'][int(kd)]} {s:.3f}" for i, kd, s in
              zip(ids, test["kind"].to_numpy()[pick], test["anomaly_score"].to_numpy()[pick])]
    anomaly_map_grid([images[int(i)] for i in ids], maps[pick], titles, masks=list(masks[pick]),
                     title=f"{method}: test images and anomaly maps (score = max, reconstruction)").show()
entropy = []
for row in frame[frame["method"] != "stpm"].itertuples():
    rows = open_run(row.run_dir).instances(split="train", columns=["epoch", "memory_entropy"])
    entropy.append(rows.groupby("epoch")["memory_entropy"].mean().reset_index().assign(method=row.method, digit=row.digit,
                                                                                         seed=row.seed))
entropy = pd.concat(entropy, ignore_index=True)
fig = go.Figure()
for method, part in entropy.groupby("method"):
    curve = part.groupby("epoch")["memory_entropy"].mean()
    fig.add_scatter(x=curve.index.tolist(), y=curve.tolist(), mode="lines+markers", name=method)
fig.add_hline(y=float(np.log(16)), line_dash="dot", annotation_text="uniform read (log 16)")
fig.update_layout(title="mean entropy of the memory reads on training images (all digits and seeds)",
                  xaxis_title="epoch", yaxis_title="nats", template="plotly_white").show()
last_entropy = entropy[entropy["epoch"] == entropy["epoch"].max()].groupby("method")["memory_entropy"].mean()

# %% [markdown]
# ## 5. Verdict in words
#
# **What the miniature can say:** whether, on 8×8 digits with a digit classifier as teacher, a
# normality memory in the student changes the ranking of normal against anomalous images,
# beyond the noise of 3 seeds, and whether a memory without its normality losses does the same.
# **What it cannot say:** anything about the paper's industrial images (MVTec-style textures and
# objects at 256×256 with an ImageNet backbone), its numbers, or its reverse-distillation
# variant; with ~30 normal test images per digit one image moves an AUROC by a few hundredths.

# %%
describe = partial(reporting.describe, threshold=False)
n = len(seeds)
lines = [describe(averaged[label], "memkd", f"memkd − stpm, {label}") for label in METRICS]
lines.append(describe(averaged["image AUROC"], "memory_only", "memory_only − stpm, image AUROC"))
lines.append(describe(averaged["image AUROC"], "memkd_sharp", "memkd_sharp (τ = 0.1) − stpm, image AUROC"))
lines.append(describe(vs_control, "memkd", "memkd − memory_only, image AUROC"))
lines.append(describe(gap_summary, "gain on pasted patches", "memkd's gain on pasted patches − its gain on other digits"))
lines += [describe(per_digit[k], f"memkd@{k}", f"memkd − stpm on digit {k}") for k in CLASSES]
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    noisy = [k for k in CLASSES if per_digit[k].set_index("arm").loc[f"memkd@{k}", "verdict"] != "resolved"]
    auroc_claim = claim(averaged["image AUROC"], "memkd")
    at_least = "contradicted" if auroc_claim == "contradicted" else "holds"
    detail = {"contradicted": "a resolved loss", "holds": "a resolved gain"}.get(auroc_claim, "no resolved difference")
    clearer = claim(gap_summary, "gain on pasted patches")
    claim = (f"Claim 'MemKD ≥ the baseline (mean image AUROC)': {at_least} ({detail}). "
             f"Claim 'most clearly where anomalies resemble normality (pasted patches)': {clearer}. "
             f"Digits where memkd − stpm is within noise: {', '.join(map(str, noisy)) or 'none'}.")
arm_means = means.groupby("arm")[IMG].mean()
verdict_text = (f"Over {n} seed(s) and normal digits {CLASSES}: " + "; ".join(lines) + ". " + claim
                + " Mean image AUROC: " + ", ".join(f"{a} {arm_means[a]:.4f}" for a in ARMS) + "."
                + " Memory-read entropy at the last epoch (log 16 = 2.77): "
                + ", ".join(f"{m} {v:.3f}" for m, v in last_entropy.items()) + ".")
display(Markdown(verdict_text))

# %% [markdown]
# ## 6. Save the results

# %%
wall = time.perf_counter() - started
load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # the CPU may be shared: say how busy it was
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # this kernel and its finished worker processes
save_results(results_path, "p18_memkd",
             [(averaged[label], "stpm") for label in METRICS] + [(vs_control, "memory_only"), (gap_summary, "gain on other digits")]
             + [(per_digit[k], f"stpm@{k}") for k in CLASSES],
             budget, seeds, wall,
             title="MemKD: a key-value normality memory in the student, cosine feature-KD anomaly score, "
                   "one-class digits (image and pixel AUROC; reconstruction: the memory's fusion, the max "
                   "image score, pasted-patch anomalies)",
             notes=verdict_text.replace("**", "") + f" Wall time {wall:.0f} s with {WORKERS} run(s) at a time; "
                   f"load average (1, 5, 15 min) at the end: {load}; CPU time of the notebook and its "
                   f"workers {cpu:.0f} s (on 2 otherwise idle cores the wall time would be about half that).")
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {wall:.0f} s; load average {load}; CPU {cpu:.0f} s")
