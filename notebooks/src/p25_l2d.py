# %% [markdown]
# # L2D: multi-label knowledge distillation, in miniature (paper 25 of the ICCV 2023 list)
#
# **The method.** L2D (Yang et al., ICCV 2023) argues that softmax KD fits multi-label outputs
# badly (independent sigmoids do not sum to one) and that whole-image features under-represent
# small classes. It distils (1) the logits *one-vs-all*, a binary KL per label,
# L_MLD = (1/N) Σ_{n,c} KL(Bern(σ(z_T)) ‖ Bern(σ(z_S))), and (2) the *structure* of label-wise
# embeddings (class queries cross-attending to the feature map): normalised distance matrices
# across the positive instances of each class (class-aware, CD) and across the positive labels
# of each instance (instance-aware, ID), compared with summed smooth-L1. The hard loss is BCE
# summed over labels. In the engine: `method: l2d` (`kd_engine/methods/l2d.py`), the losses in
# `kd_engine/losses/multilabel.py` and `kd_engine/losses/binary.py`, the model `query_cnn`, the
# dataset `digit_mosaics`.
#
# **The miniature** (`configs/l2d_digits.yaml`): 16×16 mosaics of 2×2 digits with 1–4 distinct
# classes (label = the set, multi-hot over 10); 2000 training, 400 validation and 800 test
# mosaics from disjoint pools of digit images. Teacher: a CNN with 32–64 channels and a
# label-query head (10 queries, 1 cross-attention layer, d = 32), trained with summed BCE for 10
# epochs per seed and cached; student: 8–16 channels, d = 16. Adam 1e-3, batch 64, 10 epochs.
# **Deviations from the planned design:** 2000 / 10 epochs instead of 3000 / 15 (CPU budget); the
# structure weights are rescaled from the reference CD 100 / ID 1000 to 1 / 10 because at the
# reference weights the structure terms dominated the BCE and the student collapsed in a pilot
# (rescaling them was planned for this case); the reference weights stay as a control arm.
#
# **Arms** (same seeds: the seed fixes the mosaics, the teacher, the initialisation and the
# batch order):
#
# * `bce`: the student on summed BCE alone: **the baseline**;
# * `softmax_kd`: + T²·KL between softmax(z/T) of teacher and student over the 10 labels, T = 4;
# * `mld`: + 10·L_MLD (one-vs-all binary KD);
# * `mld_led`: + 10·L_MLD + 1·L_CD + 10·L_ID (the full method at rescaled weights);
# * `mld_led_ref`: the full method at the reference weights (10, 100, 1000).
#
# **Metrics:** macro mAP over the 10 labels (`kd_engine.metrics_extra.multilabel_map`) and
# micro-F1 at threshold 0.5, on the test mosaics, from each run's final student weights (the
# training loop's own "accuracy" scores the top-left tile only and is not a task metric).
#
# **Claim to test (the paper's):** full ≥ MLD > softmax KL ≈ BCE. The paper's COCO numbers are its
# claims, not targets here.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, 2 teacher epochs, 300 training mosaics (plumbing;
# no verdict). `full`: 3 seeds, the config's settings; its wall time is measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs (plumbing check); "full": 3 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import yaml
from IPython.display import Markdown, display
from sklearn.metrics import average_precision_score, f1_score

from kd_engine import reporting
from kd_engine.config import validate
from kd_engine.data import build_data
from kd_engine.data.mosaics import targets_for
from kd_engine.experiment import format_summary, setup, summarize
from kd_engine.losses.affinity import relation_matrix
from kd_engine.losses.multilabel import class_structure, instance_structure
from kd_engine.methods.l2d import L2D
from kd_engine.metrics_extra import multilabel_map
from kd_engine.models import build_model
from kd_engine.trainers.checkpoint import load_weights
from workbench.figures import arm_comparison, map_panels, paired_differences

ctx = setup("p25_l2d", "configs/l2d_digits.yaml", budget, seeds=3, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
if budget == "smoke":
    base["distill"]["params"]["teacher_epochs"] = 2
    base["data"]["params"].update(n_train=300, n_val=100, n_test=200)
print(f"teacher epochs {base['distill']['params']['teacher_epochs']} (trained by the method)")

# %% [markdown]
# ## 1. The config and the arms

# %%
print(yaml.safe_dump({k: base[k] for k in ("data", "student", "distill", "optimizer", "epochs")}, sort_keys=False))
off = {"distill.params.mld_weight": 0.0, "distill.params.cd_weight": 0.0, "distill.params.id_weight": 0.0}
arms = {"bce": dict(off),
        "softmax_kd": {**off, "distill.params.softmax_kd_weight": 1.0},
        "mld": {"distill.params.cd_weight": 0.0, "distill.params.id_weight": 0.0},
        "mld_led": {},
        "mld_led_ref": {"distill.params.cd_weight": 100.0, "distill.params.id_weight": 1000.0}}
order = list(arms)
for name, overrides in arms.items():
    print(f"{name:<13} {overrides}")

# %%
frame = ctx.run_arms(arms)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s (the first run of each seed also trains its teacher)")

# %% [markdown]
# ## 2. Multi-label metrics from the final weights
#
# Each run's final student is loaded from its checkpoint and scored on the test mosaics:
# sigmoid scores → macro mAP and micro-F1 at 0.5. The teacher (the same cached teacher for every
# arm of a seed) is scored the same way. To see whether the structure terms do what they claim,
# the class- and instance-aware structure losses L_CD and L_ID between each student and the
# teacher are also measured on the test mosaics (batches of 64; lower = the student's label
# embeddings are arranged more like the teacher's).

# %%
MAP, F1 = "test/student_map", "test/student_micro_f1"
CD, ID = "test/class_structure_gap", "test/instance_structure_gap"
scores, teachers = {}, {}
for run in frame.itertuples():
    cfg = validate(yaml.safe_load((Path(run.run_dir) / "config.yaml").read_text()))
    data = build_data(cfg.data, cfg.seed)
    student = build_model(cfg.student, data.input_shape, data.num_classes)
    load_weights(student, Path(run.run_dir) / "checkpoints" / "student.safetensors")
    targets = targets_for(data, "test")
    with torch.no_grad():
        scores[run.Index] = student.eval()(data.test.x).sigmoid().numpy()
        if run.seed not in teachers:
            method = L2D(cfg, student, None, data.input_shape)  # loads the seed's cached teacher
            teachers[run.seed] = (method.ml_teacher, method.ml_teacher(data.test.x).sigmoid().numpy(), targets, data)
    frame.loc[run.Index, MAP] = multilabel_map(targets, scores[run.Index])
    frame.loc[run.Index, F1] = f1_score(targets, scores[run.Index] > 0.5, average="micro")
    with torch.no_grad():  # the structure terms on the test mosaics, in batches of 64 as in training
        e_s, e_t, t = student.label_embeddings(data.test.x)[0], teachers[run.seed][0].label_embeddings(data.test.x)[0], \
            torch.as_tensor(targets)
        chunks = [slice(i, i + 64) for i in range(0, len(t), 64)]
        frame.loc[run.Index, CD] = float(np.mean([class_structure(e_s[c], e_t[c], t[c]) for c in chunks]))
        frame.loc[run.Index, ID] = float(np.mean([instance_structure(e_s[c], e_t[c], t[c]) for c in chunks]))
teacher_rows = pd.DataFrame([{"arm": "teacher", "seed": s, MAP: multilabel_map(t[2], t[1]),
                              F1: f1_score(t[2], t[1] > 0.5, average="micro")} for s, t in teachers.items()])
display(pd.concat([frame[["arm", "seed", "wall_s", MAP, F1, CD, ID]], teacher_rows], ignore_index=True))

# %% [markdown]
# ## 3. Results: mean ± std over seeds, paired differences
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against a baseline: the per-seed
# paired difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within
# noise*. Tables: mAP and micro-F1 against `bce` (the teacher shown for reference), then the
# claim's links as their own paired comparisons: `mld` vs `softmax_kd`, `mld_led` vs `mld`.

# %%
with_teacher = pd.concat([frame, teacher_rows], ignore_index=True)
map_summary = summarize(with_teacher, MAP, baseline="bce")
f1_summary = summarize(with_teacher, F1, baseline="bce")
mld_vs_soft = summarize(frame[frame["arm"].isin(["softmax_kd", "mld"])], MAP, baseline="softmax_kd")
full_vs_mld = summarize(frame[frame["arm"].isin(["mld", "mld_led"])], MAP, baseline="mld")
cd_summary, id_summary = (summarize(frame, m, baseline="bce") for m in (CD, ID))
display(Markdown("**Test macro mAP** (baseline `bce`)"), format_summary(map_summary))
display(Markdown("**Test micro-F1 at 0.5** (baseline `bce`)"), format_summary(f1_summary))
display(Markdown("**MLD vs softmax KD (mAP)**"), format_summary(mld_vs_soft))
display(Markdown("**MLD + LED vs MLD (mAP)**"), format_summary(full_vs_mld))
display(Markdown("**Test L_CD student↔teacher** (baseline `bce`; lower = closer class-aware structure)"),
        format_summary(cd_summary))
display(Markdown("**Test L_ID student↔teacher** (baseline `bce`; lower = closer instance-aware structure)"),
        format_summary(id_summary))

# %%
arm_comparison(with_teacher, MAP, order=order + ["teacher"],
               title=f"test macro mAP: mean ± std over {len(seeds)} seed(s), points = seeds").show()
paired_differences(frame, "bce", MAP, order=order[1:],
                   title="paired mAP difference vs bce (band: mean ± 2·std/√n)").show()
fig = go.Figure()
for arm in order:
    ap = np.mean([average_precision_score(teachers[r.seed][2], scores[r.Index], average=None)
                  for r in frame[frame["arm"] == arm].itertuples()], axis=0)
    fig.add_bar(x=[str(c) for c in range(10)], y=ap.tolist(), name=arm)
fig.update_layout(barmode="group", title="per-class test AP (mean over seeds)", xaxis_title="class",
                  yaxis_title="AP", template="plotly_white").show()

# %% [markdown]
# ## 4. What the structure loss compares: teacher and student distance matrices for one class
#
# For class 0 and the first 12 test mosaics that contain it: the class-0 label embeddings'
# pairwise distances, each matrix divided by its mean off-diagonal distance, for the teacher and
# for the `bce` and `mld_led` students of the first seed.

# %%
seed0 = seeds[0]
teacher_model, _, targets0, data0 = teachers[seed0]
rows = np.flatnonzero(targets0[:, 0] > 0)[:12]
panels = {}
with torch.no_grad():
    panels["teacher"] = relation_matrix(teacher_model.label_embeddings(data0.test.x[rows])[0][:, 0], "distance").numpy()
    for arm in ("bce", "mld_led"):
        run = frame[(frame["arm"] == arm) & (frame["seed"] == seed0)].iloc[0]
        cfg = validate(yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text()))
        student = build_model(cfg.student, data0.input_shape, data0.num_classes)
        load_weights(student, Path(run["run_dir"]) / "checkpoints" / "student.safetensors")
        panels[f"student {arm}"] = relation_matrix(student.eval().label_embeddings(data0.test.x[rows])[0][:, 0],
                                                   "distance").numpy()
for arm in ("bce", "mld_led"):
    panels[f"difference {arm}"] = panels[f"student {arm}"] - panels["teacher"]
map_panels(panels, title=f"normalised distance matrices of class-0 embeddings, 12 test mosaics, seed {seed0}",
           diverging=("difference bce", "difference mld_led")).show()
gap = {arm: float(np.abs(panels[f"difference {arm}"]).mean()) for arm in ("bce", "mld_led")}
print("mean |student − teacher| of the normalised class-0 distances:", {k: round(v, 4) for k, v in gap.items()})

# %% [markdown]
# ## 5. Verdict in words

# %%
describe = partial(reporting.describe, threshold=False)


def link(summary, arm, relation):
    """A link of the claimed chain: '>' needs a resolved gain, '≥' and '≈' no resolved loss
    (and '≈' no resolved gain either)."""
    verdict = reporting.claim(summary, arm)
    up, down = verdict == "holds", verdict == "contradicted"
    if relation == ">":
        return "holds" if up else "contradicted" if down else "not shown (within noise)"
    if relation == "≥":
        return "contradicted" if down else "holds"
    return "holds" if not (up or down) else "contradicted"


n = len(seeds)
means = map_summary.set_index("arm")["mean"]
lines = [describe(map_summary, arm, f"{arm} − bce mAP") for arm in order[1:]]
lines += [describe(mld_vs_soft, "mld", "mld − softmax_kd mAP"), describe(full_vs_mld, "mld_led", "mld_led − mld mAP")]
lines += [describe(cd_summary, "mld_led", "mld_led − bce test L_CD"), describe(id_summary, "mld_led", "mld_led − bce test L_ID")]
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    claim = (f"Claim 'full ≥ MLD': {link(full_vs_mld, 'mld_led', '≥')}. "
             f"Claim 'MLD > softmax KL': {link(mld_vs_soft, 'mld', '>')}. "
             f"Claim 'softmax KL ≈ BCE': {link(map_summary, 'softmax_kd', '≈')}.")
verdict_text = (f"Over {n} seed(s), test macro mAP (mean): " + ", ".join(f"{a} {means[a]:.4f}" for a in order + ["teacher"])
                + ". " + "; ".join(lines) + ". " + claim
                + f" The paper's structure weights (CD 100, ID 1000) give mAP {means['mld_led_ref']:.4f} "
                f"against {means['mld_led']:.4f} at the rescaled 1 / 10. Mean |student − teacher| of the "
                f"normalised class-0 distance matrix of 12 test mosaics (seed {seed0}, a single noisy "
                f"example): bce {gap['bce']:.4f}, mld_led {gap['mld_led']:.4f}. "
                f"The test split has {len(data0.test)} mosaics.")
display(Markdown(verdict_text))

# %% [markdown]
# ## 6. Save the results

# %%
ctx.save(results_path,
         [(map_summary, "bce"), (f1_summary, "bce"), (mld_vs_soft, "softmax_kd"), (full_vs_mld, "mld"),
          (cd_summary, "bce"), (id_summary, "bce")],
         title="L2D (paper 25): one-vs-all binary KD + label-wise embedding structure on 2x2 digit mosaics "
               "(structure weights rescaled from the paper's)",
         notes=verdict_text.replace("**", ""))
wall = ctx.wall_s
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {wall:.0f} s")
