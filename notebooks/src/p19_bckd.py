# %% [markdown]
# # BCKD: binary classification and IoU box distillation for dense detectors, in miniature (paper 19)
#
# **The method.** A dense detector (FCOS, RetinaNet, GFL) scores every location and class with an
# independent sigmoid and learns under a heavy imbalance of background locations. Classic logit KD
# takes a softmax over the classes of a location and matches KL(softmax(t/T) ‖ softmax(s/T)); a
# softmax is blind to a shift of all logits of a location, so it cannot tell a confident detection
# from a background cell whose classes all sit near zero. BCKD (ICCV 2023) distils every
# (location, class) logit as its own binary problem, p_T = σ(t_c), p_S = σ(s_c):
#
#     L_cls = (1/N_pos) Σ_loc Σ_c BCE(p_S, p_T) · |p_T − p_S|^β          (β = 1, weight 1)
#     L_box = (1/N_pos) Σ_loc max_c |p_T − p_S| · (1 − GIoU(b_S, sg(b_T)))  (weight 4)
#
# with boxes decoded at *every* location (not only the positives), teacher boxes detached and
# both sums divided by the number of positive locations. In the engine: losses
# `kd_engine/losses/bckd.py`, method `bckd` (`kd_engine/methods/bckd.py`) on the torchvision FCOS
# of the detection task (the detectors the AID notebook uses), config `configs/bckd_fcos.yaml`.
#
# **Reconstruction** (our choices where the description leaves room): the discrepancy factor is
# a detached weight (the gradient is BCE's σ(s) − σ(t) scaled by it); the label weights are 1
# everywhere (FCOS ignores no location); N_pos is the student's FCOS positive count of the batch;
# the student's own losses are torchvision FCOS's (focal + GIoU + centerness), not GFL; the
# softmax baseline distils classification only (T = 2), without a box term.
#
# **The miniature.** Procedural traffic scenes at 64×64 px (car, pedestrian, cyclist; 1–4 objects,
# 0–2 clutter items, boxes ≥ 5 px), 512 training and 128 test images, one split for every seed
# (`data.split_seed: 0`). Teacher: FCOS on a ResNet 16/32/64/128 × 1 block + FPN 32, 12 epochs
# (768 steps), trained once and cached (a deeper 16/32/64/128 × 2 teacher trained 1024 steps
# reached only 0.025 test mAP at this size, below the student alone, and was dropped); student:
# FCOS on ResNet 8/16/32/64 × 1 block + FPN 32, 5 epochs (320 steps of batch 8), AdamW 2e-3, cosine. The teacher's pass is cached per image, so a
# distillation step costs a student step plus the two terms. mAP@[.5:.95] by pycocotools.
#
# **Arms** (the same seeds, which fix the student's initialisation and the batch order):
#
# * `student`: FCOS alone, **the baseline**;
# * `softmax_kd`: softmax KL on the sigmoid head, T = 2, the inconsistency BCKD fixes;
# * `bckd_cls`: BCKD's binary classification term only;
# * `bckd`: binary classification + GIoU box distillation at every location.
#
# **Claim to test:** bckd ≥ bckd_cls > softmax_kd ≈ student (mAP).
#
# **Budgets.** `smoke`: 1 seed, 2 epochs on 32 images (plumbing check; no verdict). `full`: 3 seeds,
# the config's epochs, two runs at a time; its wall time and load are recorded below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs, 32 images; "full": 3 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import os
import resource
from functools import partial

import pandas as pd
import plotly.graph_objects as go
import yaml
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.experiment import collect_instances, format_summary, reference_arm, setup, summarize
from workbench.figures import arm_comparison, class_weight_curves, class_weight_heatmap, disc_columns, paired_differences

ctx = setup("p19_bckd", "configs/bckd_fcos.yaml", budget, seeds=3, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
WORKERS = 1 if budget == "smoke" else 2
if budget == "smoke":
    base["data"]["params"].update(n_train=32, n_val=8, n_test=16)
    base["data"]["eval_batch_size"] = 16
print(yaml.safe_dump({k: base[k] for k in ("data", "teacher", "student", "distill", "epochs")}, sort_keys=False))

# %% [markdown]
# ## 1. The teacher (trained once, cached) and the arms

# %%
display(ctx.prepare_teachers(base)[["seed", "cached", "wall_s"]].head(1))  # one split: one teacher
ARMS = {"student": {"method": "scratch", "teacher": None},
        "softmax_kd": {"distill.params.cls_kd": "softmax", "distill.params.box_kd": "none"},
        "bckd_cls": {"distill.params.box_kd": "none"},
        "bckd": {}}
for arm, overrides in ARMS.items():
    print(f"{arm:<11} {overrides}")
frame = ctx.run_arms(ARMS, base=base, workers=WORKERS, verbose=False)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s of run time")
MAP, AP50 = "test/student_mAP", "test/student_AP50"
with_teacher = pd.concat([frame, reference_arm(frame, "bckd")], ignore_index=True)
display(with_teacher.pivot_table(index="seed", columns="arm", values=MAP).round(4))

# %% [markdown]
# ## 2. mAP per arm
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against the baseline: the per-seed
# paired difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within noise*.
# The two comparisons the claim rests on are also paired directly: `bckd_cls` against
# `softmax_kd` (binary versus softmax classification KD) and `bckd` against `bckd_cls` (what the
# box term adds).

# %%
order = list(ARMS)
map_summary = summarize(with_teacher, MAP, baseline="student")
ap50_summary = summarize(with_teacher, AP50, baseline="student")
binary_vs_softmax = summarize(frame[frame["arm"].isin(["softmax_kd", "bckd_cls"])], MAP, baseline="softmax_kd")
box_adds = summarize(frame[frame["arm"].isin(["bckd_cls", "bckd"])], MAP, baseline="bckd_cls")
display(Markdown("**Test mAP@[.5:.95]** (baseline `student`; `teacher` for reference)"), format_summary(map_summary))
display(Markdown("**Test AP50** (baseline `student`)"), format_summary(ap50_summary))
display(Markdown("**bckd_cls against softmax_kd (mAP)**"), format_summary(binary_vs_softmax))
display(Markdown("**bckd against bckd_cls (mAP)**"), format_summary(box_adds))
arm_comparison(with_teacher, MAP, order=[*order, "teacher"],
               title=f"test mAP: mean ± std over {len(seeds)} seed(s), points = seeds").show()
paired_differences(frame, "student", MAP, order=order[1:],
                   title="paired mAP difference vs the student alone (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 3. The per-class discrepancy weights
#
# Every distillation arm records |σ(t_c) − σ(s_c)| per image × FPN level × class (mean over the
# level's locations), whether or not its loss uses it. How fast it shrinks shows which KD makes the
# student reproduce the teacher's *absolute* per-class scores: the softmax arm only matches the
# scores' ratios within a location, so it should leave the discrepancy where the student alone
# would have it. Then the weights of the last BCKD run per level and class (all images, last
# epoch): where the binary term still pushes.

# %%
kd_arms = frame[frame["arm"] != "student"]
CATEGORIES = ["car", "pedestrian", "cyclist"]  # labels 1..3 of the scenes
weights = collect_instances(kd_arms, split="train", columns=["epoch", "level", "disc_c1", "disc_c2", "disc_c3"])
cols = disc_columns(weights)
weights = weights[weights["level"] >= 0]
weights["mean_disc"] = weights[cols].mean(1)
per_epoch = weights.groupby(["arm", "epoch"], sort=False)["mean_disc"].mean().reset_index()
fig = go.Figure()
for arm, part in per_epoch.groupby("arm", sort=False):
    fig.add_scatter(x=part["epoch"].tolist(), y=part["mean_disc"].tolist(), mode="lines+markers", name=arm)
fig.update_layout(title="mean |σ(t) − σ(s)| over classes, levels and training images, per epoch (all seeds)",
                  xaxis_title="epoch", yaxis_title="mean discrepancy", template="plotly_white").show()
last_bckd = weights[(weights["arm"] == "bckd") & (weights["seed"] == seeds[-1])]
class_weight_curves(last_bckd, CATEGORIES, f"bckd, seed {seeds[-1]}: mean weight per class across epochs").show()
class_weight_heatmap(last_bckd[last_bckd["epoch"] == last_bckd["epoch"].max()], CATEGORIES,
                     f"bckd, seed {seeds[-1]}: weight per FPN level and class at the last epoch").show()
final_disc = weights[weights["epoch"] == weights["epoch"].max()].groupby("arm")["mean_disc"].mean()
display(final_disc.round(5).to_frame("mean discrepancy, last epoch"))

# %% [markdown]
# ## 4. Verdict in words
#
# **What the miniature can say:** on 64-px scenes with a small FCOS pair, whether binary
# per-logit KD moves the student's mAP beyond the noise of 3 seeds where softmax KD on the same
# head does not, and whether GIoU distillation at every location adds to it; and, through the
# recorded weights, whether each KD makes the student reproduce the teacher's absolute scores.
# **What it cannot say:** anything about the paper's COCO numbers (GFL-R101 → R50/R34/R18, 1× schedule),
# about GFL's quality-focal head, or about gains of one or two mAP points, which the seed noise of
# a 320-step student on 128 test images (a few points) hides.

# %%
describe = partial(reporting.describe, threshold=False)
n = len(seeds)
lines = [describe(map_summary, arm, f"{arm} − student, mAP") for arm in order[1:]]
lines.append(describe(binary_vs_softmax, "bckd_cls", "bckd_cls − softmax_kd, mAP"))
lines.append(describe(box_adds, "bckd", "bckd − bckd_cls, mAP"))
means = map_summary.set_index("arm")["mean"]
if n < 2:
    verdict_claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    parts = {"bckd ≥ bckd_cls": reporting.claim(box_adds, "bckd") != "contradicted",
             "bckd_cls > softmax_kd": reporting.claim(binary_vs_softmax, "bckd_cls") == "holds",
             "softmax_kd ≈ student": reporting.claim(map_summary, "softmax_kd") == "not shown"}
    verdict_claim = ("Claim 'bckd ≥ bckd_cls > softmax_kd ≈ student': "
                     + "; ".join(f"{k} {'holds' if ok else 'not shown'}" for k, ok in parts.items()) + ".")
verdict_text = (f"Over {n} seed(s): " + "; ".join(lines) + ". " + verdict_claim + " Mean test mAP: "
                + ", ".join(f"{a} {means[a]:.4f}" for a in [*order, "teacher"]) + ". Mean discrepancy "
                "|σ(t) − σ(s)| at the last epoch: " + ", ".join(f"{a} {v:.5f}" for a, v in final_disc.items()) + ".")
display(Markdown(verdict_text))

# %% [markdown]
# ## 5. Save the results

# %%
load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # the CPU is shared: say how busy it was
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # this kernel and its finished worker processes
ctx.save(results_path, [(map_summary, "student"), (ap50_summary, "student"), (binary_vs_softmax, "softmax_kd"),
                        (box_adds, "bckd_cls")],
         title="BCKD: binary per-class KD weighted by |p_T − p_S| and GIoU box KD at every location, FCOS on "
               "64-px traffic scenes (mAP; reconstruction: detached weights, FCOS base losses, softmax arm "
               "without box KD)",
         notes=verdict_text.replace("**", "") + f" Wall time {ctx.wall_s:.0f} s with {WORKERS} run(s) at a time; "
               f"load average (1, 5, 15 min) at the end: {load}; CPU time of the notebook and its workers "
               f"{cpu:.0f} s (on 2 otherwise idle cores the wall time would be about half that).")
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {ctx.wall_s:.0f} s; load average {load}; CPU {cpu:.0f} s")
