# %% [markdown]
# # WCBC-IOD: within-class and between-class distillation against forgetting, in miniature
#
# **The method.** In incremental object detection a detector learns new classes from images in
# which the old classes' objects are present but unannotated: the task loss calls them
# background, and fine-tuning on the new classes destroys the old semantic space (catastrophic
# forgetting). WCBC-IOD (ICCV 2023) keeps the old model T frozen and distils its *class
# structure* into the new model S at two levels. Per object i: feature f_i, soft prediction
# s_i = softmax(z_i/τ), τ = 2. Each object gets one class, shared by T and S: its label if it is
# a labelled new object, T's prediction if T names an old class with probability ≥ 0.5, else
# none. Per class c with ≥ 2 objects in the batch: prototypes μ_c = mean f_i and π_c = mean s_i.
#
# * **Between classes:** L_BC = ‖D_f^S − D_f^T‖₁ + ‖D_s^S − D_s^T‖₁ with
#   D_f[c, c'] = ‖μ_c − μ_c'‖₂ and D_s[c, c'] = JS(π_c, π_c').
# * **Within classes:** L_WC = Σ_i ω_i [‖(f_i^S − μ_c^S) − (f_i^T − μ_c^T)‖² + KL(s_i^T ‖ s_i^S)],
#   ω_i = T's confidence.
# * L = L_task + L_BC + L_WC.
#
# In the engine: task `incremental` (`kd_engine/tasks/incremental.py`), dataset
# `digit_cells_incremental` (`kd_engine/data/incremental.py`, with the task splitter
# `split_incremental`), model `cell_transformer` (`kd_engine/models/cell_set.py`), method `wcbc`
# (`kd_engine/methods/wcbc.py`), the prototype part `kd_engine/parts/prototypes.py` and the
# losses and distance matrices `kd_engine/losses/class_structure.py`.
#
# **Reconstruction.** The paper's formulas are not public; every equation above is inferred
# from its description. Our concrete choices: s_i is the softmax over the outputs T was taught
# (the old digits and background; T never learnt the new classes), so a student that turns old
# digits into background departs from it; ω_i is T's probability of its most likely old class,
# on every assigned object (labelled new ones too, where it is usually small); L_BC is averaged
# over the prototype classes (L_BC/K) and L_WC over the assigned objects; the KL is not scaled by
# τ²; the student starts from T's weights.
#
# **The miniature** (`configs/wcbc_cells.yaml`): 16×16 mosaics of 2×2 cells, each cell a
# scikit-learn 8×8 digit or empty (p = 0.25); every cell is an object to classify into 11 classes
# (10 digits + background). Task 1 teaches digits 0–4 (800 mosaics of old digits). Task 2
# teaches 5–9 on 800 new mosaics whose non-empty cells are old digits with probability 0.4 —
# **labelled background** — and new digits otherwise. Validation (300) and test (600) mosaics
# show all ten digits, every one labelled; train/val/test digit images come from disjoint pools
# (stratified by the seed). The model stands in for a DETR: a per-cell CNN of width 16, a
# 2-layer transformer (d = 32) over the 4 cell tokens, an 11-way head; f_i is the transformer's
# output token. T: task 1 for 12 epochs (Adam 3e-3), cached per seed. S: task 2 for 12 epochs
# (Adam 1e-3, batch 32 mosaics = 128 objects) from T's weights.
#
# **Arms** (the same seeds fix the digits, the mosaics, T and the batch order):
#
# * `finetune`: task loss only — **the lower bound and the baseline**;
# * `logit_kd`: + KD (T² · KL at τ = 2) on T's known outputs, every object;
# * `feature_mse`: + MSE between S's and T's object features, every object;
# * `bc`: + L_BC; `wc`: + L_WC; `bc_wc`: + both (the method);
# * `bc_wc_old` (our ablation, not the paper's): both, with prototypes of the old
#   (teacher-assigned) classes only, since T knows nothing about the new classes' structure;
# * `joint`: fine-tuning on task 1 and task 2 with every digit labelled — **the upper bound**.
#
# **Metrics** on the test objects: accuracy on old digits, on new digits, their harmonic mean H;
# the Pearson correlation between T's and S's old-class distance matrices (D_f and D_s, class
# means over the test objects' true classes).
#
# **Claim to test:** BC + WC retains old-class accuracy better than plain feature KD, at similar
# new-class accuracy.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, 64 mosaics per task (plumbing check; no verdict).
# `full`: 3 seeds, 12 epochs, two runs at a time; its wall time is measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs, tiny data; "full": 3 seeds, the config's sizes
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import os
import resource
from functools import partial

import pandas as pd
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.experiment import format_summary, setup, summarize
from kd_engine.store import open_run
from workbench.figures import arm_comparison, paired_differences
from workbench.figures.incremental import class_distance_heatmaps, old_new_bars

ctx = setup("p02_wcbc_iod", "configs/wcbc_cells.yaml", budget, seeds=3, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
WORKERS = 1 if budget == "smoke" else 2
base["record"] = {"instances": True, "eval_instances": True, "attention_maps": 0, "feature_probe_size": 16,
                  "tensorboard": False}
if budget == "smoke":  # a plumbing check: a few mosaics are enough
    for section in (base["data"], base["teacher"]["data"]):
        section["params"] = {**section["params"], "n_per_task": 64, "n_val": 16, "n_test": 48}

# %% [markdown]
# ## 1. The teacher (task 1) and the arms (task 2)

# %%
teachers = ctx.prepare_teachers()  # one task-1 model per seed (its digit pools follow the seed)
display(teachers)
OFF = {"distill.params.between": 0.0, "distill.params.within": 0.0}
ARMS = {"finetune": OFF,
        "logit_kd": {**OFF, "distill.params.logit_kd": 1.0},
        "feature_mse": {**OFF, "distill.params.feature_mse": 1.0},
        "bc": {"distill.params.within": 0.0},
        "wc": {"distill.params.between": 0.0},
        "bc_wc": {},
        "bc_wc_old": {"distill.params.classes": "old"},
        "joint": {**OFF, "data.params.stage": "joint"}}
frame = ctx.run_arms(ARMS, workers=WORKERS, verbose=False)
OLD, NEW, H = "test/student_old_acc", "test/student_new_acc", "test/student_harmonic"
DF, DS = "test/student_df_corr", "test/student_ds_corr"
display(frame.pivot_table(index="seed", columns="arm", values=[OLD, NEW], sort=False).round(3))
print(f"teacher (task 1) on the test objects: old digits {frame['test/teacher_old_acc'].mean():.3f}, "
      f"new digits {frame['test/teacher_new_acc'].mean():.3f} (never taught)")

# %% [markdown]
# ## 2. Old, new and harmonic accuracy against fine-tuning
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against the baseline: the per-seed
# paired difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within
# noise*. Fine-tuning must forget for the comparison to mean anything: its old-class accuracy is
# printed first.

# %%
METRICS = {"old-class accuracy": OLD, "new-class accuracy": NEW, "harmonic mean H": H,
           "D_f correlation (old classes)": DF, "D_s correlation (old classes)": DS}
vs_finetune = {label: summarize(frame, metric, baseline="finetune") for label, metric in METRICS.items()}
forgetting = frame[frame["arm"] == "finetune"][OLD]
print(f"fine-tuning keeps {forgetting.mean():.3f} ± {forgetting.std():.3f} of the old digits "
      f"(the teacher: {frame['test/teacher_old_acc'].mean():.3f})")
for label, summary in vs_finetune.items():
    display(Markdown(f"**{label}** (baseline `finetune`)"), format_summary(summary))
bars = pd.concat([frame.groupby("arm", sort=False)[metric].agg(["mean", "std"]).reset_index().assign(measure=name)
                  for name, metric in (("old", OLD), ("new", NEW), ("harmonic", H))], ignore_index=True)
old_new_bars(bars, list(ARMS), title=f"test accuracy on old digits, new digits and their harmonic mean "
                                     f"(mean ± std over {len(seeds)} seed(s))").show()
paired_differences(frame, "finetune", H, order=[a for a in ARMS if a != "finetune"],
                   title="paired difference of H vs finetune (band: mean ± 2·std/√n)").show()
arm_comparison(frame, DF, order=[a for a in ARMS if a != "joint"],
               title="Pearson r between T's and S's old-class feature distance matrices (points = seeds)").show()

# %% [markdown]
# ## 3. The claim: BC + WC against plain feature KD
#
# The same rule with `feature_mse` as the baseline, on old-class and on new-class accuracy; and
# `bc_wc` against `logit_kd` (the simpler way to keep old outputs) and against our old-classes-only
# ablation.

# %%
pair = frame[frame["arm"].isin(["feature_mse", "bc_wc", "bc", "wc", "bc_wc_old"])]
vs_feature = {label: summarize(pair, metric, baseline="feature_mse") for label, metric in
              (("old-class accuracy", OLD), ("new-class accuracy", NEW), ("harmonic mean H", H))}
vs_logit = summarize(frame[frame["arm"].isin(["logit_kd", "bc_wc", "bc_wc_old"])], H, baseline="logit_kd")
vs_all_classes = {label: summarize(frame[frame["arm"].isin(["bc_wc", "bc_wc_old"])], metric, baseline="bc_wc")
                  for label, metric in (("old-class accuracy", OLD), ("new-class accuracy", NEW))}
for label, summary in vs_feature.items():
    display(Markdown(f"**{label}** (baseline `feature_mse`)"), format_summary(summary))
display(Markdown("**harmonic mean H** (baseline `logit_kd`)"), format_summary(vs_logit))
for label, summary in vs_all_classes.items():
    display(Markdown(f"**{label}**: old-class prototypes only against all classes (baseline `bc_wc`)"),
            format_summary(summary))

# %% [markdown]
# ## 4. Class structure: the feature distance matrices
#
# D_f over the ten digits' test objects (true classes), for T, the fine-tuned S and the BC + WC S
# of the last seed. T never learnt digits 5–9, so its rows for them say only where its features
# put unfamiliar digits.

# %%
seed_show = seeds[-1]
matrices, titles = [], []
for arm in ("finetune", "bc_wc"):
    run = open_run(frame[(frame["arm"] == arm) & (frame["seed"] == seed_show)]["run_dir"].iloc[0])
    teacher_df, student_df = run.load_artifact("class_distances/test")
    if not matrices:
        matrices.append(teacher_df)
        titles.append("T (task 1)")
    matrices.append(student_df)
    titles.append(f"S, {arm}")
class_distance_heatmaps(matrices, titles, list(range(10)),
                        title=f"D_f between digit means on the test objects, seed {seed_show}").show()
decisions = open_run(frame[(frame["arm"] == "bc_wc") & (frame["seed"] == seed_show)]["run_dir"].iloc[0]).instances(
    split="train", columns=["epoch", "digit", "source", "omega"])
last = decisions[decisions["epoch"] == decisions["epoch"].max()]
kind = last["digit"].map(lambda d: "empty" if d < 0 else "old" if d < 5 else "new")
assigned = pd.crosstab(kind, last["source"].map({0: "none", 1: "label", 2: "teacher"}))
display(Markdown("**How task-2 objects were assigned a class at the last epoch** (bc_wc, one seed): an "
                 "old digit is unlabelled, so it counts only where T is confident"), assigned)
omega_old = last[last["source"] == 2]["omega"].mean()
omega_new = last[last["source"] == 1]["omega"].mean()

# %% [markdown]
# ## 5. Verdict in words
#
# **What the miniature can say:** whether, when old objects are unlabelled background in the new
# task, distilling T's between- and within-class structure keeps the old classes better than
# matching features, and at what cost to the new classes, beyond the noise of 3 seeds, with a
# fine-tuning baseline that demonstrably forgets. **What it cannot say:** anything about
# detection mAP, localisation, the paper's DETR-style detector on COCO/VOC splits or its
# numbers (36.90 → 39.80 one-step IOD mAP); objects here are fixed cells, so there is no box
# matching, and the formulas are our reconstruction.

# %%
describe = partial(reporting.describe, threshold=False)
n = len(seeds)
lines = [describe(vs_finetune[label], arm, f"{arm} − finetune, {label}")
         for arm in ("logit_kd", "feature_mse", "bc_wc") for label in ("old-class accuracy", "harmonic mean H")]
lines += [describe(vs_feature[label], "bc_wc", f"bc_wc − feature_mse, {label}") for label in vs_feature]
lines += [describe(vs_feature["harmonic mean H"], arm, f"{arm} − feature_mse, H") for arm in ("bc", "wc")]
lines.append(describe(vs_logit, "bc_wc", "bc_wc − logit_kd, H"))
lines += [describe(vs_all_classes[label], "bc_wc_old", f"bc_wc_old − bc_wc, {label}") for label in vs_all_classes]
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    retains = reporting.claim(vs_feature["old-class accuracy"], "bc_wc")
    new_row = reporting.arm_row(vs_feature["new-class accuracy"], "bc_wc")
    similar = "similar (within noise)" if new_row["verdict"] != "resolved" else (
        f"not similar: {new_row['diff_mean']:+.3f}, resolved")
    claim = (f"Claim 'BC + WC retains old-class accuracy better than feature KD': {retains}. "
             f"New-class accuracy against feature KD: {similar}. "
             f"Fine-tuning forgets: old-class accuracy {forgetting.mean():.3f} against the teacher's "
             f"{frame['test/teacher_old_acc'].mean():.3f}.")
means = frame.groupby("arm", sort=False)[[OLD, NEW, H]].mean()
verdict_text = (f"Over {n} seed(s): " + "; ".join(lines) + ". " + claim + " Mean old / new / H: "
                + ", ".join(f"{a} {r[OLD]:.3f} / {r[NEW]:.3f} / {r[H]:.3f}" for a, r in means.iterrows()) + "."
                + f" Mean ω of teacher-assigned old objects {omega_old:.3f}, of labelled new objects {omega_new:.3f}"
                + " (bc_wc, last seed, last epoch).")
display(Markdown(verdict_text))

# %% [markdown]
# ## 6. Save the results

# %%
wall = ctx.wall_s
load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # the CPU may be shared: say how busy it was
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # this kernel and its finished worker processes
ctx.save(results_path, [(vs_finetune[label], "finetune") for label in METRICS]
         + [(vs_feature[label], "feature_mse") for label in vs_feature] + [(vs_logit, "logit_kd")]
         + [(vs_all_classes[label], "bc_wc") for label in vs_all_classes],
         title="WCBC-IOD: between-class (prototype distance matrices) and within-class (offsets, ω-weighted "
               "KL) distillation for class-incremental digit cells, old digits unlabelled in task 2 "
               "(reconstruction: every formula)",
         notes=verdict_text.replace("**", "") + f" Wall time {wall:.0f} s with {WORKERS} run(s) at a time; "
               f"load average (1, 5, 15 min) at the end: {load}; CPU time of the notebook and its "
               f"workers {cpu:.0f} s (on 2 otherwise idle cores the wall time would be about half that).")
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {wall:.0f} s; load average {load}; CPU {cpu:.0f} s")
