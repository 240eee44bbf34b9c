# %% [markdown]
# # UP-VL: unsupervised 3-D perception with 2-D vision–language distillation, in miniature
#
# **The method** (paper 11 of the ICCV 2023 list). Closed-set 3-D detectors miss object types
# they were never labelled with, and earlier unsupervised auto-labelling is class-agnostic and
# finds only what moves. UP-VL auto-labels LiDAR scenes with motion cues *and* a 2-D
# vision–language (VL) model's dense features, and distils those features into per-point 3-D
# features, so that a LiDAR-only network can name objects by text query at test time:
#
# * distillation: point p projects to pixel (u, v); L_VL = mean over visible p of
#   [1 − cos(f_3D(p), sg(F_2D(u, v)))], with points outside the image or hidden behind a nearer
#   surface (z-buffer test) masked;
# * auto-labels: moving clusters from two-frame differencing + DBSCAN; static clusters where the
#   2-D VL similarity to some class prompt exceeds a threshold; an objectness head learns them;
# * naming: an object's label is argmax_c mean_{p ∈ object} cos(f_3D(p), t_c), t_c the class
#   text embedding.
#
# In the engine: task `points` (`kd_engine/tasks/points.py`), dataset `ground3d`
# (`kd_engine/data/ground3d.py`), method `upvl` (`kd_engine/methods/upvl.py`), the loss
# `kd_engine/losses/projected.py`, the teacher `kd_engine/parts/vl_teacher.py`, the auto-labeller
# `kd_engine/parts/autolabel.py` (scikit-learn DBSCAN) and the evaluator `kd_engine/parts/upvl_eval.py`.
#
# **Reconstruction.** The paper publishes no code, so the whole pipeline is a reconstruction: the
# loss form above, the teacher (a tiny CNN whose 16-d pixel features are trained by a pixel-to-text
# InfoNCE against learned class-name embeddings plus a "background" embedding, on renders of
# single objects; no weights are downloaded), the differencing rule (a point moves when no
# previous-frame point lies within 0.35 m; a DBSCAN segment with ≥ 30% moving points is a motion
# label), the static rule (a segment's visible points are, on average, more similar to a seen
# class prompt than to the background prompt), the heads (a linear 16-d projection and a linear
# objectness logit on PointNet-lite's per-point features) and the evaluation below.
#
# **The miniature** (`configs/upvl_scenes.yaml`): 400 two-frame ground scenes (300 train, 100
# test), each with 2–5 objects of 5 classes (cube, tall box, cylinder, sphere, cone; each class
# with its own colour and texture in the camera image), 40% of the objects moving 0.7–1.3 m
# between the frames, 320 LiDAR-like points per frame (48 per object, the rest ground), and a
# 32×32 pinhole render of the current frame. The student sees geometry only (xyz, estimated
# normals and local shape; no colour), so at test time it has no camera. **The cone is held
# out**: it is never a class prompt in auto-labelling and gets no 3-D class label in the upper
# bound; it reaches the student only through the teacher's embedding space.
#
# **Arms** (same seeds; the seed fixes the scenes, the split and the initialisation; one cached teacher):
#
# * `motion_only`: objectness from motion labels only, no distillation: **the baseline**
#   (class-agnostic; its untrained 16-d head names objects at chance at best);
# * `motion_vl`: motion + static VL auto-labels, and L_VL;
# * `upper_bound`: true objects as objectness labels and a cross-entropy on cos(f_3D, t_c)/τ with
#   the true 3-D class of the four seen classes, plus L_VL (the cone still only through L_VL).
#
# **Claims to test:** the baseline misses static objects and semantics; the distilled model
# recovers both (static recall and naming above the baseline), with no camera at test time, and
# names the held-out class above chance (1/5).
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, 24 scenes and a 40-image teacher (plumbing only; no
# verdict). `full`: 3 seeds, 20 epochs, the config's data; two runs at a time; wall time measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs, tiny data; "full": 3 seeds, 20 epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import os
import resource
from functools import partial

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.data.scenes3d import GROUND_CLASSES
from kd_engine.experiment import arm_config, format_summary, setup, summarize
from kd_engine.methods.upvl import UPVL
from kd_engine.parts.upvl_eval import OBJECT_COLUMNS
from kd_engine.store import open_run
from workbench.figures import arm_comparison, confusion_heatmap, paired_differences, top_down_panels

ctx = setup("p11_upvl", "configs/upvl_scenes.yaml", budget, seeds=3, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
if budget == "smoke":
    base["data"]["params"].update(scenes=24, test_scenes=8)
    base["distill"]["params"].update(teacher_images=40, teacher_epochs=2)
base["eval_every"] = base["epochs"]
base["record"] = {"instances": True, "eval_instances": True, "attention_maps": 4, "tensorboard": False}
WORKERS = 1 if budget == "smoke" else 2
HELD = base["distill"]["params"]["held_out"]
NAMES = list(GROUND_CLASSES)
print(f"{len(seeds)} seed(s), {base['epochs']} epochs, data {base['data']['params']}, {WORKERS} run(s) at a time; "
      f"held-out class: {NAMES[HELD]}")

# %% [markdown]
# ## 1. The 2-D teacher, then the arms
#
# The teacher is trained once (on single-object renders from generator seeds no scene uses) and
# cached before the runs start, so parallel runs read it instead of training it twice.

# %%
teacher_file = UPVL.prepare_teacher(arm_config(base, {}, seeds[0], ctx.runs_dir, ctx.cache_dir))
print("teacher:", teacher_file)
ARMS = {"motion_only": {"distill.params.labels": "motion", "distill.params.distill_weight": 0.0},
        "motion_vl": {},
        "upper_bound": {"distill.params.labels": "truth", "distill.params.class_weight": 1.0}}
frame = ctx.run_arms(ARMS, workers=WORKERS, verbose=False)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s of run time")
METRICS = {"static recall": "test/student_recall_static", "moving recall": "test/student_recall_moving",
           "naming accuracy, seen classes": "test/student_naming_acc_seen",
           "naming accuracy, held-out class": "test/student_naming_acc_held_out",
           "per-point mIoU (named, no matching)": "test/student_mIoU"}
display(frame[["arm", "seed", *METRICS.values()]].round(4))

# %% [markdown]
# ## 2. Results against the motion-only baseline
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against `motion_only`: the per-seed
# paired difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within noise*.
# An object is *found* when one DBSCAN group of the points with objectness ≥ ½ covers it with
# point IoU ≥ 0.5; it is *named* (on its own points, so naming is judged apart from detection) by
# the mean cosine to the five class embeddings. Per point: the ground below objectness ½, else
# the nearest class embedding; the mIoU over the five classes and the ground is direct.

# %%
summaries = {label: summarize(frame, metric, baseline="motion_only") for label, metric in METRICS.items()}
for label, summary in summaries.items():
    display(Markdown(f"**{label}** (baseline `motion_only`)"), format_summary(summary))
chance = 1.0 / len(NAMES[:-1])
held = frame[["arm", "seed", METRICS["naming accuracy, held-out class"]]]
held = pd.concat([held, pd.DataFrame({"arm": "chance (1/5)", "seed": seeds,
                                      METRICS["naming accuracy, held-out class"]: chance})], ignore_index=True)
vs_chance = summarize(held, METRICS["naming accuracy, held-out class"], baseline="chance (1/5)")
display(Markdown(f"**Held-out class ({NAMES[HELD]}) naming accuracy against chance**"), format_summary(vs_chance))

# %% [markdown]
# ## 3. Plots: recall, naming, scenes from above, and the naming confusion

# %%
ORDER = list(ARMS)
for label in ("static recall", "moving recall", "naming accuracy, held-out class"):
    arm_comparison(frame, METRICS[label], order=ORDER,
                   title=f"{label} (reconstruction): mean ± std over {len(seeds)} seed(s), points = seeds").show()
paired_differences(frame, "motion_only", METRICS["static recall"], order=["motion_vl", "upper_bound"],
                   title="static recall − motion_only, per seed (band: mean ± 2·std/√n)").show()
seed_show = seeds[-1]
runs = {arm: open_run(frame[(frame["arm"] == arm) & (frame["seed"] == seed_show)]["run_dir"].iloc[0]) for arm in ARMS}
shown = runs["motion_vl"]
xyz, truth = shown.load_artifact("points/test/xyz")[0], shown.load_artifact("points/test/true")[0]
panels = {"truth": truth, **{arm: run.load_artifact("points/test/student_pred")[0] for arm, run in runs.items()}}
top_down_panels(xyz, panels, NAMES, title=f"a test scene from above, seed {seed_show}: predicted class per point "
                "(zero-shot names, reconstruction)").show()
objects = {arm: np.concatenate([open_run(r).load_artifact("points/test/upvl_objects")
                                for r in frame[frame["arm"] == arm]["run_dir"]]) for arm in ARMS}
for arm in ("motion_vl", "upper_bound"):
    table = objects[arm]
    confusion = np.zeros((len(NAMES) - 1, len(NAMES) - 1))
    np.add.at(confusion, (table[:, OBJECT_COLUMNS.index("true_class")], table[:, OBJECT_COLUMNS.index("named")]), 1)
    confusion_heatmap(confusion, NAMES[:-1], title=f"{arm}: true class (rows) × zero-shot name of every test "
                      f"object, all seeds (held out: {NAMES[HELD]}; reconstruction)").show()

# %% [markdown]
# ## 4. What the auto-labeller decided
#
# Per training scene, the number of motion and static auto-labels (recorded in the run store and
# shown on the dashboard's Instances page), against the true number of moving and static objects.

# %%
rows = []
for row in frame.itertuples():
    train = open_run(row.run_dir).instances(split="train", columns=["epoch", "moving_labels", "static_labels",
                                                                     "visible_fraction"])
    last = train[train["epoch"] == train["epoch"].max()]
    rows.append({"arm": row.arm, "seed": row.seed, "motion labels / scene": last["moving_labels"].mean(),
                 "static labels / scene": last["static_labels"].mean(), "visible fraction": last["visible_fraction"].mean()})
labels_frame = pd.DataFrame(rows)
display(labels_frame.groupby("arm")[["motion labels / scene", "static labels / scene", "visible fraction"]].mean().round(3))

# %% [markdown]
# ## 5. Verdict in words
#
# **What the miniature can say:** whether, on synthetic two-frame scenes, auto-labels from the
# teacher's class-vs-background similarity let a LiDAR-only objectness head find static objects
# that motion alone never labels, and whether distilling the teacher's pixel features into points
# lets the student name objects, including a class that no 3-D label ever mentioned, beyond the
# noise of 3 seeds. **What it cannot say:** anything about real LiDAR, real vision–language
# models (CLIP-scale text embeddings of arbitrary prompts), 3-D boxes or the paper's numbers. In
# this miniature every above-ground cluster is an object (there is no clutter), so the static
# threshold's job of rejecting non-objects is not tested: labelling every static segment would
# find them too. Two mechanisms to keep in mind when reading the numbers: (1) the motion-only
# objectness head is taught that every static object (never labelled) is background, and static
# and moving objects share their geometry, so it can learn to call little at all an object; (2) the
# upper bound's cross-entropy runs over all five class embeddings, so every labelled point pushes
# its feature away from the held-out cone's embedding: supervised labels of the seen classes can
# suppress the unseen class, and its held-out naming is no upper bound for that class.

# %%
describe = partial(reporting.describe, threshold=False)
n = len(seeds)
lines = [describe(summaries[label], "motion_vl", f"motion_vl − motion_only, {label}") for label in METRICS]
lines += [describe(summaries[label], "upper_bound", f"upper_bound − motion_only, {label}") for label in METRICS]
lines.append(describe(vs_chance, "motion_vl", f"motion_vl − chance, {NAMES[HELD]} naming"))
lines.append(describe(vs_chance, "upper_bound", f"upper_bound − chance, {NAMES[HELD]} naming"))
if n < 2:
    verdict = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    verdict = (f"Claim 'the distilled model finds more static objects than motion-only': "
               f"{reporting.claim(summaries['static recall'], 'motion_vl')}. "
               f"Claim 'it names objects better (seen classes)': "
               f"{reporting.claim(summaries['naming accuracy, seen classes'], 'motion_vl')}. "
               f"Claim 'it names the held-out {NAMES[HELD]} above chance': {reporting.claim(vs_chance, 'motion_vl')}.")
means = frame.groupby("arm")[list(METRICS.values())].mean()
verdict_text = (f"Over {n} seed(s): " + "; ".join(lines) + ". " + verdict + " Means: "
                + "; ".join(f"{arm}: " + ", ".join(f"{label} {means.loc[arm, m]:.3f}" for label, m in METRICS.items())
                            for arm in ARMS) + ".")
display(Markdown(verdict_text))

# %% [markdown]
# ## 6. Save the results

# %%
wall = ctx.wall_s
load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # the CPU may be shared: say how busy it was
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)
ctx.save(results_path, [(summaries[label], "motion_only") for label in METRICS] + [(vs_chance, "chance (1/5)")],
         title="UP-VL (reconstruction): motion + 2-D VL auto-labels and VL feature distillation into LiDAR-only "
               "points, two-frame ground scenes (static/moving recall, zero-shot naming with a held-out class, "
               "named per-point mIoU)",
         notes=verdict_text.replace("**", "") + f" Wall time {wall:.0f} s with {WORKERS} run(s) at a time; load "
               f"average (1, 5, 15 min) at the end: {load}; CPU time of the notebook and its workers {cpu:.0f} s.")
print(f"budget {budget}: {n} seed(s), {len(frame)} runs in {wall:.0f} s; load average {load}; CPU {cpu:.0f} s")
