# %% [markdown]
# # OTD: optimization trajectory distillation across domains and classes, in miniature (paper 5 of the ICCV 2023 list) — a reconstruction
#
# **The method.** OTD (ICCV 2023, "Taxonomy Adaptive Cross-Domain Adaptation in Medical Imaging via
# Optimization Trajectory Distillation") targets adaptation where the domain shifts *and* the label set
# grows, so the target domain and the novel classes give few or unreliable gradient signals. Its premise:
# gradients occupy a low-rank subspace; the subspace spanned by reliable sources (the labelled source
# domain, well-annotated classes) can steer the unreliable ones, in two streams.
#
# **Everything on this page is a reconstruction.** Our reading rests on the paper's abstract and a figure caption;
# no code is public. The concrete form (ours, *inferred*): on the parameter group "last block + head",
# keep the last M = 30 reliable gradients, take U_r from their SVD at 90 % energy (refreshed every 10
# steps), and replace an unreliable gradient g by U_rU_rᵀg + α(I − U_rU_rᵀ)g with α = 0.3.
# *Stream 1* (cross-domain): the source-gradient subspace steers the target pseudo-label gradient.
# *Stream 2* (cross-class): the known-class target gradients' subspace steers the novel-class gradient
# (few-shot CE plus novel pseudo-labels). Pseudo-labels need confidence ≥ 0.9.
#
# **In the engine**: `method: otd` (`kd_engine/methods/otd.py`), the projector
# `kd_engine/parts/grad_subspace.py` (its change of gradient enters through a zero-valued surrogate
# term, so it acts after backward and before the optimizer step), the data `digits_shift`
# (`kd_engine/data/domain_shift.py`).
#
# **The miniature** (`configs/otd_digits.yaml`): digits halved. Source: classes 0–7 of one half, clean and
# labelled. Target: the other half, all 10 classes, "stained" (blur σ = 0.7, gamma ∈ [0.7, 1.4],
# noise σ = 0.15), unlabelled except 5 labelled images per novel class (8, 9) — this few-label convention
# is also inferred; 40 % of the target half is held out as the test set. Student: CNN width 16, trained from
# scratch, SGD lr 0.05, cosine schedule.
#
# **Deviations from the planned design.** (1) No *inversion* in the stain: in a preliminary run with the planned
# inversion (seed 0, 40 epochs, self-training) the student predicted 8 or 9 for every stained test image —
# the few labelled novel images teach "stained means 8 or 9", source-only transfer is at chance, and there
# is nothing left for a projection to steer; without inversion source-only transfer works on the shared
# classes and self-training has something to start from (the engine keeps `data.params.invert` to rerun the
# planned setting). (2) 20 epochs instead of 40 and 3 seeds instead of 5, for the shared CPU.
#
# **Arms** (same seeds): `source_only`; `self_train` (source CE + target pseudo-labels + few-shot CE,
# no projection: **the baseline**); `stream1`; `stream2`; `both`.
#
# **Metrics**: target test accuracy on the shared classes 0–7 and on the novel classes 8–9, and their
# harmonic mean H. **Premise check**: how much of the source-gradient buffer's energy its top 1, 3, 10
# singular directions hold, and the rank reaching 90 %.
#
# **Claim to test (the paper's):** projection raises H. This is uncertain at this scale; a null result is
# likely and is reported as such.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs (plumbing, no verdict). `full`: 3 seeds (the planned minimum;
# 5 do not fit the shared CPU), epochs as set below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs (plumbing check); "full": 3 seeds
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs go here (None: a fresh temporary directory)

# %%
import time

import pandas as pd
import yaml
from IPython.display import Markdown, display

from kd_engine.experiment import collect_instances, collect_scalars, format_summary, setup, summarize
from kd_engine.reporting import arm_row as row, claim as claim_of, describe
from kd_engine.store import open_run
from workbench.figures import arm_comparison, arm_curves, paired_differences

FULL_EPOCHS = 20  # the planned 40 do not fit the shared CPU with 15 runs
ctx = setup("p05_otd", "configs/otd_digits.yaml", budget, seeds=3, work_dir=work_dir,
            epochs=FULL_EPOCHS if budget == "full" else None)
seeds, base = ctx.seeds, ctx.base
print(yaml.safe_dump({k: base[k] for k in ("data", "student", "distill", "optimizer", "epochs")}, sort_keys=False))

# %% [markdown]
# ## 1. The arms

# %%
NO_STREAMS = {"distill.params.stream1": False, "distill.params.stream2": False}
arms = {"source_only": {"distill.params.mode": "source_only", **NO_STREAMS},
        "self_train": {"distill.params.mode": "self_train", **NO_STREAMS},
        "stream1": {"distill.params.mode": "self_train", "distill.params.stream1": True, "distill.params.stream2": False},
        "stream2": {"distill.params.mode": "self_train", "distill.params.stream1": False, "distill.params.stream2": True},
        "both": {"distill.params.mode": "self_train", "distill.params.stream1": True, "distill.params.stream2": True}}
for name, overrides in arms.items():
    print(f"{name:<12} {overrides}")
t_arms = time.perf_counter()
frame = ctx.run_arms(arms)
print(f"{len(frame)} runs in {time.perf_counter() - t_arms:.0f} s")

# %% [markdown]
# ## 2. Target accuracy on shared and novel classes, and H
#
# From each run's test-split rows (the stained target test images, final student): accuracy on classes
# 0–7, on 8–9, and H = 2·shared·novel/(shared + novel) (0 when either is 0).

# %%
KNOWN = base["data"]["params"]["known_classes"]
rows = []
for r in frame.itertuples():
    test = open_run(r.run_dir).instances(split="test", columns=["instance_id", "label", "student_pred"])
    correct = test["label"] == test["student_pred"]
    shared, novel = float(correct[test["label"] < KNOWN].mean()), float(correct[test["label"] >= KNOWN].mean())
    rows.append({"arm": r.arm, "seed": r.seed, "test/shared_acc": shared, "test/novel_acc": novel,
                 "test/H": 0.0 if shared + novel == 0 else 2 * shared * novel / (shared + novel)})
frame = frame.merge(pd.DataFrame(rows), on=["arm", "seed"])
frame[["arm", "seed", "test/student_acc", "test/shared_acc", "test/novel_acc", "test/H", "wall_s"]]

# %% [markdown]
# ## 3. The premise and the streams over training (from the run store)
#
# Per step, each run logs how much energy the top 1, 3 and 10 singular directions of the 30-gradient
# source buffer hold (`src_energy_r*`), the rank reaching 90 % (`src_rank`), the share of the target
# known-class gradient inside the source subspace (`cos_known_src`, ‖UUᵀg‖/‖g‖), of the novel-class
# gradient inside the known-class subspace (`cos_novel_known`), and the fraction of target images with a
# pseudo-label (`pseudo_rate`). Per instance: `pseudo_label`, `pseudo_conf`, `pseudo_used`, `pseudo_correct`.

# %%
keys = ["train/src_energy_r1", "train/src_energy_r3", "train/src_energy_r10", "train/src_rank",
        "train/cos_known_src", "train/cos_novel_known", "train/cos_novel_src", "train/pseudo_rate"]
scal = collect_scalars(frame, keys)
curves = scal.groupby(["arm", "seed", "key", "epoch"], as_index=False)["value"].mean()
inst = collect_instances(frame, split="train", columns=["epoch", "pseudo_used", "pseudo_correct", "target"])
pl = inst[inst["pseudo_used"] == 1].groupby(["arm", "seed", "epoch"], as_index=False)["pseudo_correct"].mean()
curves = pd.concat([curves, pl.rename(columns={"pseudo_correct": "value"}).assign(key="pseudo_label_accuracy")],
                   ignore_index=True)
premise = scal[scal["key"].str.startswith("train/src_")].groupby("key")["value"].mean()
display(premise.round(3).to_frame("mean over all steps, arms and seeds"))

# %%
energy = curves[curves["key"].str.startswith("train/src_energy")].copy()
energy["r"] = energy["key"].str.replace("train/src_energy_", "top ")  # averaged over the arms
energy = (energy.groupby(["r", "seed", "epoch"], as_index=False)["value"].mean()
          .rename(columns={"r": "arm"}).assign(key="energy"))
arm_curves(energy, "energy",
           title="premise check (reconstruction): energy held by the top r singular directions of the source-gradient buffer").show()
arm_curves(curves, "train/src_rank", title="rank reaching 90 % energy of the 30-gradient source buffer (reconstruction)").show()
arm_curves(curves, "train/cos_known_src",
           title="share of the target known-class gradient inside the source subspace (reconstruction)").show()
arm_curves(curves, "train/cos_novel_known",
           title="share of the novel-class gradient inside the known-class subspace (reconstruction)").show()
arm_curves(curves, "pseudo_label_accuracy", title="accuracy of the pseudo-labels used, per epoch (reconstruction)").show()

# %% [markdown]
# ## 4. Results: mean ± std over seeds, paired differences against self-training
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against `self_train`: the per-seed paired
# difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within noise*.

# %%
h = summarize(frame, "test/H", baseline="self_train")
shared = summarize(frame, "test/shared_acc", baseline="self_train")
novel = summarize(frame, "test/novel_acc", baseline="self_train")
acc = summarize(frame, "test/student_acc", baseline="self_train")
for title, table in (("H (harmonic mean of shared and novel accuracy)", h), ("shared classes 0–7", shared),
                     ("novel classes 8–9", novel), ("all target test images", acc)):
    display(Markdown(f"**{title}**"), format_summary(table))
order = list(arms)
arm_comparison(frame, "test/H", order=order, title="target H: mean ± std, points = seeds (reconstruction)").show()
paired_differences(frame, "self_train", "test/H", order=[a for a in order if a != "self_train"],
                   title="paired H difference vs self-training (reconstruction)").show()

# %% [markdown]
# ## 5. Verdict in words

# %%
n = int(row(h, "self_train")["n"])
lines = [describe(h, a, f"{a} − self_train, H") for a in ("source_only", "stream1", "stream2", "both")]
lines += [describe(novel, "both", "both − self_train, novel accuracy"), describe(shared, "both", "both − self_train, shared accuracy")]
means = {a: row(h, a)["mean"] for a in arms}
r90 = premise.get("train/src_rank", float("nan"))
e3 = premise.get("train/src_energy_r3", float("nan"))
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    up = [a for a in ("stream1", "stream2", "both") if claim_of(h, a) == "holds"]
    down = [a for a in ("stream1", "stream2", "both") if claim_of(h, a) == "contradicted"]
    claim = ("the paper's claim that projection raises H is "
             + (f"supported for {', '.join(up)}" if up else "not shown (no projection arm is resolved above self-training)")
             + (f"; resolved *below* self-training: {', '.join(down)}" if down else "") + ". "
             + f"Mean H: " + ", ".join(f"{a} {v:.3f}" for a, v in means.items()) + ". "
             + f"Premise: on average the top 3 of 30 source gradients hold {e3:.2f} of the buffer's energy and "
             + f"{r90:.1f} directions reach 90 %, so the gradients are "
             + ("low-rank" if r90 <= 10 else "not strongly low-rank") + " in this miniature.")
verdict_text = (f"Reconstruction (paper 5, abstract only). Over {n} seed(s), paired against self-training: "
                + "; ".join(lines) + ". In words: " + claim
                + f" (Miniature: {base['epochs']} epochs instead of the reference setting's 40; 3 seeds instead of 5.)")
display(Markdown(verdict_text))

# %% [markdown]
# ## 6. Save the results

# %%
ctx.save(results_path, [(h, "self_train"), (shared, "self_train"), (novel, "self_train"), (acc, "self_train")],
         title="OTD (paper 5, reconstruction): gradient-subspace steering on stained digits with new classes",
         notes=verdict_text.replace("**", "").replace("*", ""))
wall = ctx.wall_s
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {wall:.0f} s")
