# %% [markdown]
# # The distillation catalogue side by side, on digits
#
# **What this is.** Every logit and feature distillation loss the engine registers, trained on one
# teacher-student pair with the same seeds, each paired against plain KD (Hinton et al.). It is the
# page to open first to see all methods next to each other (every run is also on the dashboard:
# `kdw dashboard --runs-dir <the runs folder printed below>`).
#
# **What it is not.** Digits (8×8 grey images, 10 classes, about a thousand training images) is far
# too easy and too small to rank methods the way CIFAR-100 or ImageNet tables do: the teacher is
# near-perfect, the student too, and most differences are fractions of a test image. The verdicts
# below say which differences are *resolved* on this pair at this budget, nothing more. The
# CIFAR-100 comparison needs the CIFAR model zoo and configs.
#
# **The pair** (`configs/catalogue_digits.yaml`): ResNet width 32 → ResNet width 8 (stages
# `layer1` 8×8, `layer2` 4×4, `layer3` 2×2, embedding `pool`), SGD 0.05 with cosine decay, 15
# epochs, batch 64. Every arm keeps the cross-entropy (weight 1) and adds its method's term(s).
#
# **Weights.** Where the loss here has the scale of the common CIFAR-100 re-implementations, their
# weight is used (AT 1000, FitNet 100, NST 50, SP 3000, PKT 30000, VID 1, RKD 1 with its inner
# 25/50, CRD 0.8, ReviewKD 1, DKD α 1 β 8). The others are this notebook's choices, not tuned
# values: OFD 10⁻³ (its partial L2 is a sum over all elements of a map), CC 100 (here the
# paper's Gaussian-RBF form, whose scale differs from the bilinear form the common weight was set
# for), and KD on standardised logits (Sun et al., CVPR 2024) at T = 2 with weight 9. CRD draws
# K = 512 negatives per instance, not the paper's 16384: digits has about 1,100 training images
# (CIFAR has 50,000), and at K ≈ N its step costs three times a KD step on this CPU.
# KDSVD is left out: it needs equal channel counts at each tapped point, and this pair's widths
# differ fourfold.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs (a plumbing check; no verdict). `full`: 3 seeds, the
# config's epochs.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs (plumbing check); "full": 3 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import time

import pandas as pd
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.config import load_raw
from kd_engine.experiment import (apply_budget, budget_settings, format_summary, prepare_teachers,
                                  repo_file, run_arms, save_results, summarize, work_dirs)
from workbench.figures import arm_comparison, paired_differences

started = time.perf_counter()
settings = budget_settings(budget, seeds=3)
seeds = settings["seeds"]
work, runs_dir, cache_dir = work_dirs(work_dir, "catalogue")
base = apply_budget(load_raw(repo_file("configs/catalogue_digits.yaml")), settings)
print(f"budget {budget}: seeds {seeds}, student epochs {base['epochs']}, "
      f"teacher epochs {base['teacher']['train']['epochs']}")
print(f"runs: {runs_dir}  (browse them with: kdw dashboard --runs-dir {runs_dir})")

# %% [markdown]
# ## 1. The arms
#
# One entry per method: its `distill.terms` (loss, weight, layers, parameters). `kd` is the
# baseline of every comparison; `ce` (the student alone) shows how much distillation adds at all.

# %%
def term(loss, weight=1.0, student_layer=None, teacher_layer=None, **params):
    out = {"loss": loss, "weight": weight, "params": params}
    if student_layer:
        out.update(student_layer=student_layer, teacher_layer=teacher_layer or student_layer)
    return out


STAGES = "layer1,layer2,layer3,pool"
methods = {
    "kd": [term("kd", temperature=4.0)],
    "kd_standardized": [term("kd", 9.0, temperature=2.0, standardize=True)],
    "dkd": [term("dkd", alpha=1.0, beta=8.0, temperature=4.0)],
    "dist": [term("dist")],
    "cs": [term("cs")],
    "at": [term("attention_transfer", 1000.0, "layer2")],
    "fitnet": [{**term("fitnet", 100.0, "layer2"), "adapter": "conv1x1"}],
    "nst": [term("nst", 50.0, "layer3")],
    "sp": [term("similarity_preserving", 3000.0, "layer3")],
    "pkt": [term("pkt", 30000.0)],
    "cc": [term("cc", 100.0)],
    "rkd": [term("rkd")],
    "vid": [term("vid", 1.0, "layer2")],
    "ofd": [term("ofd", 1e-3, "layer3.0.bn2")],
    "crd": [term("crd", 0.8, negatives=512)],
    "reviewkd": [term("reviewkd", 1.0, STAGES, mid_channels=32)],
}
arms = {"ce": {"method": "scratch"},
        **{name: {"distill.terms": terms} for name, terms in methods.items()}}
display(pd.DataFrame([{"arm": name, "terms": "; ".join(
    f"{t['loss']}×{t['weight']:g}" + (f" @ {t['student_layer']}" if t.get("student_layer") else "")
    + (f" {t['params']}" if t["params"] else "") for t in terms)} for name, terms in methods.items()]))

# %% [markdown]
# ## 2. Teachers (one per seed, trained on that seed's split, cached), then every arm

# %%
teachers = prepare_teachers(base, seeds, runs_dir, cache_dir)
t_students = time.perf_counter()
frame = run_arms(base, arms, seeds, runs_dir, cache_dir)
student_wall = time.perf_counter() - t_students
print(f"{len(frame)} student runs in {student_wall:.0f} s ({student_wall / len(frame):.1f} s per run)")
wall_by_arm = frame.groupby("arm", sort=False)["wall_s"].mean().round(1)
display(wall_by_arm.rename("mean wall s per run").to_frame())

# %% [markdown]
# ## 3. Results: mean ± std over seeds, paired differences against KD
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against `kd`: the per-seed paired
# difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within noise*.

# %%
metric = "test/student_acc"
summary = summarize(frame, metric, baseline="kd")
display(format_summary(summary))
order = list(arms)
arm_comparison(frame, metric, order=order,
               title=f"test accuracy: mean ± std over {len(seeds)} seed(s), points = seeds").show()
paired_differences(frame, "kd", metric, order=[a for a in order if a != "kd"],
                   title="paired test-accuracy difference vs kd (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 4. Verdict in words

# %%
n = int(reporting.arm_row(summary, "kd")["n"])
others = [a for a in order if a != "kd"]
lines = [reporting.describe(summary, arm, f"{arm} − kd test accuracy", words=("better", "worse"))
         for arm in others]
if n < 2:
    head = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    better = [a for a in others if reporting.claim(summary, a) == "holds"]
    worse = [a for a in others if reporting.claim(summary, a) == "contradicted"]
    head = (f"Over {n} seeds, paired against KD: resolved better: {', '.join(better) or 'none'}; "
            f"resolved worse: {', '.join(worse) or 'none'}; every other arm is within noise of KD. "
            "On digits this ranks nothing beyond this pair and budget.")
verdict_text = head + " " + "; ".join(lines) + "."
display(Markdown(verdict_text))

# %% [markdown]
# ## 5. Save the results
#
# `kdw reproduce` passes `results_path`; at the full budget the JSON becomes this notebook's section
# of `docs/results.md`.

# %%
wall = time.perf_counter() - started
save_results(results_path, "catalogue", [(summary, "kd")], budget, seeds, wall,
             title="The catalogue side by side: every logit and feature method vs KD on digits (ResNet w32 → w8)",
             notes=verdict_text.replace("**", ""))
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} student runs + {len(teachers)} teacher(s) in {wall:.0f} s")
