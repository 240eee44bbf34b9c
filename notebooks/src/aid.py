# %% [markdown]
# # AID: Adaptive Instance Distillation for object detection, a reproduction in miniature
#
# **The method.** AID (Lan & Tian, 2022) lets the *teacher's own detection loss* on an instance
# set how much the student imitates it there: w = exp(−α·L_task^T), α = 0.1 in the paper. The
# premise: where the teacher gets an instance wrong, imitating it there does harm, so that
# instance should count less. The weight multiplies Zhang & Ma's attention-guided and non-local
# distillation terms (ICLR 2021), one weight per image × FPN level (`granularity: per_image_level`).
# Engine parts: `kd_engine/weighting/aid.py`, configs `configs/aid_fcos.yaml` (single-stage) and
# `configs/aid_fasterrcnn.yaml` (two-stage).
#
# **What the paper claims (abstract only):** on average **+2.7 mAP** for single-stage and **+2.1
# mAP** for two-stage detectors over the base distillation. Those are the paper's numbers on real
# benchmarks, not targets here. Everything below is a **reproduction in miniature** on procedural
# traffic scenes (cars, pedestrians, cyclists) with tiny torchvision detectors.
#
# **Two settings in which the teacher's loss can say something.** A teacher scored on the images
# it trained on has memorised them: its loss is uniformly small and AID's weights sit near 1
# (this notebook's first version measured a mean weight of 0.994, so AID was base distillation
# under another name). Here the teacher of each pair is trained once on **scenes disjoint from the
# student's** (another split seed), and used in two settings:
#
# * `clean`: the student's labels are clean. The teacher's loss on an image is the loss of a model
#   that has not seen it, so it varies with how hard the image is.
# * `noisy`: the student's training labels carry the scene generator's label noise: 10 % of the
#   boxes get a wrong class, 5 % are dropped and 5 % are jittered by up to 30 % of their size.
#   The generator records which annotations it corrupted, so we can ask AID's premise directly:
#   **does low weight find the corrupted images?** (AUROC of 1 − w against the noise flag, per
#   epoch; 0.5 is chance.) Note what "the teacher gets it wrong" means here: the teacher's loss
#   is measured against the *noisy* label, so it is high where the label is wrong and the teacher
#   is right. AID then down-weights distillation exactly where the teacher could have corrected
#   the label; whether that helps or hurts the student is part of what is measured.
#
# **Arms** (per pair and setting, all on the same seeds, the same base distillation weights in every KD arm):
#
# | arm | what it is | config overrides |
# |---|---|---|
# | `scratch` | the student alone, no teacher | `method: scratch`, `teacher: null` |
# | `base` | Zhang & Ma, w ≡ 1 (**the baseline**) | `weighting: uniform` |
# | `aid` | AID, α = 0.1 (the paper's setting) | the config's default |
# | `aid_shuffled` | AID's weights permuted across instances within each batch | `weighting.params.shuffle: true` |
# | `aid_mean` | w ≡ w̄: uniform weights scaled to AID's mean weight | `weighting: uniform`, `value: w̄` |
#
# The `noisy` setting runs all five arms on both pairs; the `clean` setting runs `scratch`, `base`
# and `aid` (the CPU budget allows no more: the controls go where the weights spread most).
#
# w̄ is the mean weight the `aid` arm of the **same seed, pair and setting** recorded over its last
# epoch (every image × level row). `aid − aid_mean` is the effect of **adaptivity** (same strength,
# no adaptivity) and `aid − aid_shuffled` the effect of **assignment** (same weight distribution,
# random assignment). The α sweep, self-distillation and cross-fitted teachers are in the
# companion notebook `aid_extra`.
#
# **Why FCOS for the single-stage pair.** The first version used RetinaNet: after 1024 steps its
# student alone reached 0.017 test mAP where FCOS reached 0.176 on the same scenes and schedule
# (`docs/aid_levers.md` measures each lever). FCOS has one location per feature cell instead of
# RetinaNet's nine anchors, assigns positives by centre sampling within a size range, and
# regresses with GIoU, so a from-scratch detector gets useful gradients from the first steps.
#
# **Budgets.**
#
# * `smoke` (CI): 1 seed, 24 train / 8 val / 8 test scenes of 64 px, 1 epoch, small models. Every
#   arm, a plumbing check: it can never give a verdict and its mAPs are ≈ 0.
# * `full` (2-core CPU, the main comparison): 3 seeds, two runs at a time (one per core), 96-px
#   scenes with 1–4 objects and 0–2 clutter items (objects of 5 px or more), 512 train / 64 val /
#   128 test images, one dataset per setting and one teacher per pair (`data.split_seed: 0`: the
#   seeds vary the students' initialisation and batch order, not the images). FCOS: students
#   1152 steps (batch 8, AdamW lr 4e-3, cosine), teacher 2560 steps (lr 4e-3) on 1024 disjoint
#   scenes. Faster R-CNN: students 256 steps, teacher 1024 steps (AdamW 2e-3). The teacher's pass
#   is cached per image (`teacher_pass_cache`: offline KD, no augmentation), so a distillation
#   step skips the teacher's forward. The settings come from `docs/aid_levers.md`; the wall time
#   is measured below and recorded in the results.
# * `gpu`: the reference setting (128-px scenes, 1000 / 200 / 200 images, 24 epochs = 3000 steps
#   for teacher and students, 5 seeds) on `device: cuda`. No GPU result is reported here.
#
# **What this miniature can and cannot say about the paper's +2.7 / +2.1 mAP.** It cannot confirm
# or refute those numbers: they are averages over KITTI and a COCO traffic subset with full-size
# GFL and Faster R-CNN, while this is procedural scenes, detectors of 0.1–3 M parameters, about a
# thousand CPU steps and seed noise of a few mAP points. It can test the premise the gain rests
# on (is exp(−α·teacher loss) low where the teacher is wrong, measured against injected label
# noise?) and whether AID beats the controls that match its strength (constant mean weight) and
# its weight distribution (shuffled weights) beyond seed noise, at this scale.
#
# **Resuming.** Every arm whose run already finished in `work_dir` with the same config is reused
# (not retrained), and an interrupted one resumes from its last epoch; the notebook prints which.
# `kdw reproduce` keeps its work folder between calls (`--fresh` to start over), so a full budget
# can span several sittings.

# %% tags=["parameters"]
budget = "smoke"      # "smoke" (CI plumbing check), "full" (2-core CPU, the main comparison) or "gpu" (reference setting)
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from kd_engine.arm_runs import describe_reuse
from kd_engine.experiment import (budget_settings, format_summary, prepare_teachers, reference_arm, run_jobs,
                                  save_results, summarize, work_dirs)
from kd_engine.store import StoreError, open_run
from kd_engine.aid_experiment import (PAIRS, UNIFORM, aid_arm, last_epoch, noisy, pair_config,
                                                per_image)
from kd_engine.weighting.aid_report import auroc_verdict, bootstrap_auroc, noise_auroc, weight_spread
from workbench.figures import (arm_comparison, arm_distributions, boxes_frame, detection_gallery,
                               paired_differences)

CLASS_NAMES = ["car", "pedestrian", "cyclist"]
MAP, AP50 = "test/student_mAP", "test/student_AP50"
SETTINGS = ("clean", "noisy")
ARMS = ["scratch", "base", "aid", "aid_shuffled", "aid_mean"]
# The controls run where the weights carry the most information (the noisy labels); the clean
# setting runs the three arms that say whether AID helps there (the budget allows no more).
SETTING_ARMS = {"clean": ["scratch", "base", "aid"], "noisy": ARMS}

started = time.perf_counter()
if budget == "gpu":
    settings = {**budget_settings("full", seeds=5), "budget": "gpu"}
else:
    settings = budget_settings(budget, seeds=3)
seeds = settings["seeds"]

WORKERS = 2 if budget == "full" else 1  # runs trained at once (one torch thread each)


work, runs_dir, cache_dir = work_dirs(work_dir, "aid")
bases = {key: pair_config(key, budget, settings) for key in PAIRS}
for key, raw in bases.items():
    print(f"{key}: {raw['student']['name']}  data {raw['data']['params']}  teacher {raw['teacher']['params']} "
          f"x {raw['teacher']['train']['epochs']} epochs on split {raw['teacher']['data']['split_seed']}, "
          f"student {raw['student']['params']} x {raw['epochs']} epochs, optimizer {raw['optimizer']}")
print(f"budget {budget}: seeds {seeds}; runs: {runs_dir}  (browse them with: kdw dashboard --runs-dir {runs_dir})")

# %% [markdown]
# ## 1. Scenes and teachers
#
# The scenes are generated once per (settings, split seed) and cached under `work_dir/cache`;
# each pair's teacher is trained once on the disjoint scenes and cached by the engine (the two
# pairs' teachers train at the same time when two workers are available).

# %%
if WORKERS > 1:
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(prepare_teachers, list(bases.values()), [seeds[:1]] * len(bases),
                              [runs_dir] * len(bases), [cache_dir] * len(bases)))
else:
    parts = [prepare_teachers(raw, seeds[:1], runs_dir, cache_dir) for raw in bases.values()]
teachers = pd.concat([part.assign(pair=key) for key, part in zip(bases, parts)], ignore_index=True)
teachers

# %% [markdown]
# ## 2. The arms
#
# Every fixed arm of both pairs, settings and seeds first (two at a time at the `full` budget,
# the slowest first), then `aid_mean` with the `aid` arm's recorded mean weight.

# %%
def setting_overrides(key, setting):
    return noisy(bases[key]) if setting == "noisy" else {}


# the student alone trains without a teacher: observing one would only cost its forward pass
SCRATCH = {"method": "scratch", "teacher": None, "distill.params": {}, **UNIFORM}
FIXED = {"scratch": SCRATCH, "base": UNIFORM, "aid": aid_arm(), "aid_shuffled": aid_arm(shuffle=True)}


jobs, tags = [], []
for key in bases:
    for setting in SETTINGS:
        for seed in seeds:
            for arm, over in FIXED.items():
                if arm not in SETTING_ARMS[setting]:
                    continue
                jobs.append((bases[key], arm, {**over, **setting_overrides(key, setting)}, seed))
                tags.append((key, setting))
order = sorted(range(len(jobs)), key=lambda i: (tags[i][0] != "fcos", jobs[i][1] == "scratch"))
jobs, tags = [jobs[i] for i in order], [tags[i] for i in order]
fixed = run_jobs(jobs, runs_dir, cache_dir, verbose=False, workers=WORKERS)
fixed["pair"], fixed["setting"] = [t[0] for t in tags], [t[1] for t in tags]

mean_w, ctrl_jobs, ctrl_tags = [], [], []
for (key, setting, seed), part in fixed.groupby(["pair", "setting", "seed"], sort=False):
    if "aid_mean" not in SETTING_ARMS[setting]:
        continue
    w_bar = float(last_epoch(part.set_index("arm").loc["aid", "run_dir"], ["epoch", "weight"])["weight"].mean())
    mean_w.append({"pair": key, "setting": setting, "seed": seed, "aid mean weight": w_bar})
    ctrl_jobs.append((bases[key], "aid_mean", {"weighting.strategy": "uniform", "weighting.params": {"value": w_bar},
                                               **setting_overrides(key, setting)}, seed))
    ctrl_tags.append((key, setting))
ctrl = run_jobs(ctrl_jobs, runs_dir, cache_dir, verbose=False, workers=WORKERS)
ctrl["pair"], ctrl["setting"] = [t[0] for t in ctrl_tags], [t[1] for t in ctrl_tags]
frame = pd.concat([fixed, ctrl], ignore_index=True)
frame["arm"] = pd.Categorical(frame["arm"], ARMS)
frame = frame.sort_values(["pair", "setting", "seed", "arm"]).reset_index(drop=True)
frame["arm"] = frame["arm"].astype(str)
print(describe_reuse(frame.to_dict("records")))
for (key, setting, seed), part in frame.groupby(["pair", "setting", "seed"], sort=False):
    print(f"{key} {setting} seed {seed}: " + ", ".join(f"{a} {m:.3f}" for a, m in zip(part["arm"], part[MAP]))
          + f"  (mAP; {part['wall_s'].sum():.0f} s)")
print(f"{len(frame)} student runs in {time.perf_counter() - started:.0f} s so far")
display(pd.DataFrame(mean_w))

# %% [markdown]
# ## 3. Results: mean ± std over seeds, paired differences against base distillation
#
# **Reporting rule** (`docs/NOTEBOOKS.md`): each arm mean ± std (n−1) over seeds; against the
# baseline the per-seed paired difference, mean ± std; **resolved** only if |mean diff| > 2·std/√n,
# otherwise **within noise**. One seed is always within noise. Arms are named
# `<pair>_<setting>_<arm>` (`fcos_noisy_aid`, ...) in the tables and the results JSON.

# %%
def cell(key, setting, arms=None):
    part = frame[(frame["pair"] == key) & (frame["setting"] == setting)]
    if arms is not None:
        part = part[part["arm"].isin(arms)]
    return part.assign(arm=f"{key}_{setting}_" + part["arm"])


summaries, tables, teacher_map = [], {}, {}
for key, (title, _) in PAIRS.items():
    for setting in SETTINGS:
        data = cell(key, setting)
        for metric in (MAP, AP50):
            s = summarize(data, metric, baseline=f"{key}_{setting}_base")
            summaries.append((s, f"{key}_{setting}_base"))
            tables[(key, setting, metric)] = s
            display(Markdown(f"**{title}, {setting}: {metric}, paired against `{key}_{setting}_base`**"),
                    format_summary(s))
    t = summarize(reference_arm(cell(key, "clean"), f"{key}_clean_base", f"{key}_teacher"), MAP, f"{key}_teacher")
    summaries.append((t, f"{key}_teacher"))
    teacher_map[key] = float(t["mean"].iloc[0])
    display(Markdown(f"*{title} teacher (trained on the disjoint scenes), test mAP:* {teacher_map[key]:.4f}"))

# %% [markdown]
# ### The controls: adaptivity and assignment, explicitly
#
# `aid − aid_mean` (adaptivity) and `aid − aid_shuffled` (assignment), per pair and setting, as
# paired differences (the control is the baseline of each comparison).

# %%
controls = {}
for key in PAIRS:
    for setting in [st for st in SETTINGS if "aid_mean" in SETTING_ARMS[st]]:
        for ctrl_arm, what in (("aid_mean", "adaptivity"), ("aid_shuffled", "assignment")):
            for metric in (MAP, AP50):
                s = summarize(cell(key, setting, ["aid", ctrl_arm]), metric, baseline=f"{key}_{setting}_{ctrl_arm}")
                summaries.append((s, f"{key}_{setting}_{ctrl_arm}"))
                controls[(key, setting, what, metric)] = s.set_index("arm").loc[f"{key}_{setting}_aid"]
display(pd.DataFrame([{"pair": k, "setting": st, "effect": w, "metric": m, "diff (aid − control)": r["diff_mean"],
                       "std": r["diff_std"], "threshold": r["threshold"], "verdict": r["verdict"]}
                      for (k, st, w, m), r in controls.items()]))

# %%
for key, (title, _) in PAIRS.items():
    for setting in SETTINGS:
        data = cell(key, setting)
        order = [f"{key}_{setting}_{a}" for a in SETTING_ARMS[setting]]
        arm_comparison(data, MAP, order=order,
                       title=f"{title}, {setting}: test mAP, mean ± std over {len(seeds)} seed(s), points = seeds").show()
        paired_differences(data, f"{key}_{setting}_base", MAP, order=[a for a in order if not a.endswith("_base")],
                           title=f"{title}, {setting}: paired test-mAP difference vs base (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 4. The weights AID chose: spread, not only the mean
#
# Per pair, setting and seed: the `aid` arm's weights over its last epoch, one per image (the
# mean over its FPN levels): mean, std, 5th and 95th percentiles and minimum, over the images.
# AID's weights depend on the teacher and the image only, so every seed has the same ones here
# (the std over seeds is 0). The summary rows (each statistic's mean ± std over seeds) go into
# the results.

# %%
spread_rows = []
for key in PAIRS:
    for setting in SETTINGS:
        for seed in seeds:
            run_dir = frame[(frame["pair"] == key) & (frame["setting"] == setting) & (frame["seed"] == seed)
                            & (frame["arm"] == "aid")]["run_dir"].iloc[0]
            spread_rows.append({"pair": key, "setting": setting, "seed": seed, **weight_spread(per_image(run_dir)["w"])})
spread = pd.DataFrame(spread_rows)
n_seeds = len(seeds)
display(spread)
for key in PAIRS:
    for setting in SETTINGS:
        part = spread[(spread["pair"] == key) & (spread["setting"] == setting)]
        # descriptive rows (no comparison): each statistic's mean ± std over seeds
        s = pd.DataFrame([{"arm": f"{key}_{setting}_aid", "metric": f"train/aid_weight_{stat}",
                           "mean": float(part[stat].mean()), "std": float(part[stat].std(ddof=1)) if n_seeds > 1
                           else float("nan"), "n": n_seeds, "diff_mean": None, "diff_std": None,
                           "verdict": "descriptive"} for stat in ("mean", "std", "p5", "p95")])
        summaries.append((s, None))
weights = pd.concat([per_image(frame[(frame["pair"] == key) & (frame["setting"] == st) & (frame["seed"] == seeds[0])
                                     & (frame["arm"] == "aid")]["run_dir"].iloc[0]).assign(arm=f"{key} {st}")
                     for key in PAIRS for st in SETTINGS], ignore_index=True)
arm_distributions(weights, "w", group_col="arm",
                  title=f"AID weights per image (mean over levels), seed {seeds[0]}, last epoch").show()

# %% [markdown]
# ## 5. Does low AID weight find the corrupted labels?
#
# In the `noisy` setting every training row carries `label_noise` (the image's corrupted
# annotations). Per epoch: the AUROC of 1 − w against "this image has a corrupted annotation"
# for the `aid` arm, and for the `aid_shuffled` arm's *used* weights as a control (its weights are
# AID's, assigned at random, so it should sit at 0.5).
#
# **How the last epoch's AUROC is judged against chance.** AID's weights are a function of the
# frozen teacher and the image only: every student seed sees the same weights on the same images,
# so the AUROC does not vary over seeds and the reporting rule's spread over seeds (0) would call
# any difference resolved. Its uncertainty comes from the images instead: the images are
# resampled with replacement (1000 times, the same resample for every seed), and the AUROC is
# **resolved** against 0.5 only if the bootstrap 95 % interval excludes it. The results rows give
# the mean over seeds (on all images) and the bootstrap standard deviation.
#
# **The shuffled control is not exactly at chance, by construction.** It permutes AID's weights
# within each batch of 8 images, so a corrupted image draws its weight from a pool that holds its
# own low weight: its expected AUROC is pulled above 0.5 by about 1/8 of AID's own distance from
# 0.5 (≈ 0.55 for an AID AUROC of 0.89). A shuffled AUROC near that value is the control behaving
# as expected, not information.

# %%
auroc_parts, last_frames = [], {}
for key in PAIRS:
    for seed in seeds:
        for arm, column in (("aid", "aid_weight"), ("aid_shuffled", "weight")):
            run_dir = frame[(frame["pair"] == key) & (frame["setting"] == "noisy") & (frame["seed"] == seed)
                            & (frame["arm"] == arm)]["run_dir"].iloc[0]
            rows = open_run(run_dir).instances(split="train")
            auroc_parts.append(noise_auroc(rows, weight=column).assign(pair=key, arm=arm, seed=seed))
            last_frames.setdefault((key, arm), []).append(per_image(run_dir, weight=column))
auroc = pd.concat(auroc_parts, ignore_index=True)
display(auroc.pivot_table(index=["pair", "arm", "epoch"], columns="seed", values="auroc_image"))
auroc_tables = {}
for key in PAIRS:
    rows = []
    for arm in ("aid", "aid_shuffled"):
        b = bootstrap_auroc(last_frames[(key, arm)])
        rows.append({"arm": f"{key}_noisy_{arm}", "metric": "train/noise_auroc_image", "mean": b["mean"],
                     "std": b["std"], "n": len(seeds), "diff_mean": b["mean"] - 0.5, "diff_std": b["std"],
                     "verdict": auroc_verdict(b), "lo": b["lo"], "hi": b["hi"], "n_images": b["n_images"]})
    s = pd.DataFrame(rows)
    summaries.append((s, "chance"))
    auroc_tables[key] = s.set_index("arm")
    display(Markdown(f"**{PAIRS[key][0]}: AUROC of 1 − w against the injected noise (last epoch) against "
                     "chance 0.5, with its bootstrap 95 % interval over the images**"),
            s[["arm", "mean", "std", "lo", "hi", "n_images", "verdict"]])

# %% [markdown]
# ## 6. The lowest-weighted noisy images
#
# The training images AID trusted least in the `noisy` setting (FCOS, first seed), their GT
# boxes coloured by the image's weight; the titles say how many of their annotations were
# corrupted. The detection Instances page of any `noisy` run shows the same, per epoch.

# %%
def gallery(run_dir, title, k=8):
    run = open_run(run_dir)
    lowest = per_image(run_dir).set_index("instance_id").sort_values("w").head(k)
    images = run.images([int(i) for i in lowest.index])
    if not images:
        print(f"{title}: this run has no image bank")
        return
    try:
        boxes = boxes_frame(run.load_artifact("gt_boxes"))
    except StoreError:
        boxes = None
    ordered = {int(i): images[int(i)] for i in lowest.index if int(i) in images}
    titles = [f"#{i} w={lowest.loc[i, 'w']:.2f}, {int(lowest.loc[i, 'label_noise'])} corrupted" for i in ordered]
    detection_gallery(ordered, boxes, lowest["w"], titles=titles, class_names=CLASS_NAMES, ncols=4, title=title).show()


noisy0 = frame[(frame["pair"] == "fcos") & (frame["setting"] == "noisy") & (frame["seed"] == seeds[0])].set_index("arm")
gallery(noisy0.loc["aid", "run_dir"], "FCOS, noisy labels: the lowest-weighted training images")

# %% [markdown]
# ## 7. Verdict in words

# %%
def words(key, setting, arm):
    r = tables[(key, setting, MAP)].set_index("arm").loc[f"{key}_{setting}_{arm}"]
    if int(r["n"]) < 2:
        return f"{arm} {r['diff_mean']:+.4f} (one seed)"
    return f"{arm} {r['diff_mean']:+.4f} ± {r['diff_std']:.4f} ({r['verdict']})"


def ctrl_words(key, setting, what):
    r = controls[(key, setting, what, MAP)]
    if int(r["n"]) < 2:
        return f"{r['diff_mean']:+.4f} (one seed)"
    return f"{r['diff_mean']:+.4f} ± {r['diff_std']:.4f} ({r['verdict']})"


n = len(seeds)
lines = []
for key, (title, _) in PAIRS.items():
    scratch = tables[(key, "clean", MAP)].set_index("arm").loc[f"{key}_clean_scratch"]
    lines.append(f"{title}: teacher {teacher_map[key]:.3f} test mAP, student alone {scratch['mean']:.3f} ± "
                 f"{0 if n < 2 else scratch['std']:.3f}.")
    for setting in SETTINGS:
        sp = spread[(spread["pair"] == key) & (spread["setting"] == setting)]
        others = [a for a in ["aid", "aid_shuffled", "aid_mean", "scratch"] if a in SETTING_ARMS[setting]]
        ctrl_text = (f" Adaptivity (aid − aid_mean) {ctrl_words(key, setting, 'adaptivity')}, assignment "
                     f"(aid − aid_shuffled) {ctrl_words(key, setting, 'assignment')}."
                     if "aid_mean" in SETTING_ARMS[setting] else "")
        lines.append(f"{title}, {setting}, mAP vs base: " + "; ".join(words(key, setting, a) for a in others)
                     + f".{ctrl_text} AID weights per image: mean "
                     f"{sp['mean'].mean():.3f}, std {sp['std'].mean():.3f}, p5 {sp['p5'].mean():.3f}, "
                     f"p95 {sp['p95'].mean():.3f} (averaged over seeds).")
    a = auroc_tables[key]
    lines.append(f"{title}, noisy: AUROC of 1 − w against the corrupted images (last epoch) "
                 + "; ".join(f"{arm.split('_noisy_')[1]} {r['mean']:.3f} (95 % interval over images "
                             f"{r['lo']:.3f}–{r['hi']:.3f}; {r['verdict']} vs chance)" for arm, r in a.iterrows()) + ".")
if n < 2:
    head = (f"Only {n} seed at the `{budget}` budget: no verdict is possible, and at this size the mAPs are "
            "near 0. This run checks the plumbing only.")
else:
    gains = [f"{k} {st}" for k in PAIRS for st in SETTINGS
             if tables[(k, st, MAP)].set_index("arm").loc[f"{k}_{st}_aid", "verdict"] == "resolved"
             and tables[(k, st, MAP)].set_index("arm").loc[f"{k}_{st}_aid", "diff_mean"] > 0]
    found = [k for k in PAIRS if auroc_tables[k].loc[f"{k}_noisy_aid", "verdict"] == "resolved"
             and auroc_tables[k].loc[f"{k}_noisy_aid", "diff_mean"] > 0]
    head = (f"Over {n} paired seeds at the `{budget}` budget (a reproduction in miniature; the paper's abstract "
            "reports +2.7 / +2.1 mAP for single- / two-stage detectors, which this miniature can neither confirm "
            "nor refute): "
            + ("AID beats base distillation beyond seed noise for " + ", ".join(gains) if gains
               else "AID does not beat base distillation beyond seed noise in any pair and setting")
            + "; " + ("low AID weight finds the corrupted images better than chance for " + ", ".join(found) if found
                      else "low AID weight does not find the corrupted images better than chance")
            + ".")
verdict_text = " ".join([head, *lines])
display(Markdown(verdict_text))

# %% [markdown]
# ## 8. Save the results
#
# `kdw reproduce` passes `results_path`; the JSON holds every summary above (schema in
# `docs/NOTEBOOKS.md`): per pair and setting mAP and AP50 against base distillation, the teacher,
# the two control comparisons, the weight spread and the AUROC against chance.

# %%
wall = time.perf_counter() - started
# what this notebook's runs took, even when this sitting reused finished ones (first teacher start to
# last run end); the folder may also hold aid_extra's runs, which are not counted
own = {Path(p).name for p in frame["run_dir"]}
teacher_keys = {Path(p).stem[:8] for p in teachers["cache_path"]}
metas = [open_run(p).meta() for p in sorted(runs_dir.iterdir()) if (p / "store.sqlite").is_file()
         and (p.name in own or (p.name.split("-")[-2] in teacher_keys and "-teacher-" in p.name))]
span = max(m["updated"] for m in metas) - min(m["created"] for m in metas)
busy = sum(m["updated"] - m["created"] for m in metas)
timing = (f" Wall time {wall:.0f} s in this sitting; the {len(metas)} runs (teachers included) spanned {span:.0f} s "
          f"from the first start to the last end and took {busy:.0f} s of run time in all, {WORKERS} at a time.")
print(timing)
notes = verdict_text.replace("**", "").replace("`", "") + timing
save_results(results_path, "aid", summaries, budget, seeds, wall,
             title="AID (Lan & Tian 2022) on Zhang & Ma distillation, FCOS and Faster R-CNN on traffic scenes with "
                   "a disjoint teacher, clean and noisy labels: a reproduction in miniature", notes=notes)
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} student runs + {len(teachers)} teacher(s) in {wall:.0f} s")
