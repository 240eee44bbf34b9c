# %% [markdown]
# # Cr-KD: class-relation knowledge distillation for novel class discovery, in miniature (paper 10 of the ICCV 2023 list)
#
# **The method.** In novel class discovery (NCD) a model knows some classes from labels and must
# cluster samples of *novel* classes without labels. Cr-KD (ICCV 2023) observes that how novel
# samples relate to the known classes (the known-class model's distribution over known classes
# on a novel sample) fades as discovery training proceeds, and distils that relation from the
# frozen known-class model into the new model's known head, on unlabelled samples only, weighted
# per sample by a **learnable gate** u_i (the new model's own probability mass on the known
# classes, renormalised by its batch mean, *not detached*). Basis: the paper's public code.
#
# **In the engine** (`method: crkd`, `kd_engine/methods/crkd.py`; loss and gate in
# `kd_engine/losses/class_relation.py`; Sinkhorn-Knopp in `kd_engine/losses/sinkhorn.py`; the
# stage 1 and NCD metrics in `kd_engine/methods/ncd_stage.py`; data `digits_ncd`; model `ncd_resnet`):
# stage 1 trains the network supervised on the known classes and freezes a copy as the teacher;
# stage 2 is UNO (two augmented views, swapped prediction, Sinkhorn-Knopp pseudo-labels with
# ε = 0.05 and 3 iterations, 4 novel heads, τ = 0.1) plus α·L_kd with stacked temperatures
# (τ, then T = 4).
#
# **The miniature** (`configs/crkd_digits.yaml`): digits, classes 0–4 known and 5–9 novel (novel
# labels are used only to evaluate), train 1400 / test 397; augmentation ±1 px shift, mild
# rotation/scale jitter, σ = 0.05 noise. To fit the CPU budget the CNN has width 8 (planned: 16),
# batch 256 with lr 0.1, and 15 + 20 epochs (planned: 20 + 30).
#
# **Arms** (same seeds; the seed fixes the split, the initialisation, the batch order and the
# views; stage 1 is identical across arms of a seed):
# `uno` (α = 0, **the baseline**), `crkd_nogate` (α = 0.1, u ≡ 1), `crkd` (α = 0.1, gate on),
# `crkd_a0.3` (α = 0.3, gate on).
#
# **Metrics.** Hungarian clustering accuracy of the novel head on the novel *training* samples
# (the paper's headline, `train/novel_acc`), and on the test split: novel (task-aware, Hungarian),
# known (known head), all (task-agnostic argmax over [known, novel], Hungarian). Last epoch.
#
# **Claim to test (the paper's):** α > 0 raises novel accuracy; the gate helps most for novel classes
# unlike any known class. Paper numbers are the paper's claims, not targets.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs (plumbing check); "full": 5 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs go here (None: a fresh temporary directory)

# %%
import json
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import yaml
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.experiment import collect_scalars, format_summary, setup, summarize
from kd_engine.store import open_run
from workbench.figures import arm_comparison, arm_curves, arm_distributions, paired_differences

ctx = setup("p10_crkd", "configs/crkd_digits.yaml", budget, seeds=5, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
if budget == "smoke":
    base["distill"]["params"]["stage1_epochs"] = 2
print(f"stage-1 epochs {base['distill']['params']['stage1_epochs']}, stage-2 epochs {base['epochs']}")

# %% [markdown]
# ## 1. The config and the arms

# %%
print(yaml.safe_dump({k: base[k] for k in ("data", "student", "distill", "optimizer", "epochs")}, sort_keys=False))
arms = {"uno": {"distill.params.alpha": 0.0},
        "crkd_nogate": {"distill.params.alpha": 0.1, "distill.params.gate": False},
        "crkd": {"distill.params.alpha": 0.1, "distill.params.gate": True},
        "crkd_a0.3": {"distill.params.alpha": 0.3, "distill.params.gate": True}}
ORDER = list(arms)
for name, overrides in arms.items():
    print(f"{name:<12} {overrides}")

# %% [markdown]
# ## 2. Run the arms (stage 1 and stage 2 inside each run)

# %%
t_runs = time.perf_counter()
frame = ctx.run_arms(arms)
run_wall = time.perf_counter() - t_runs
print(f"{len(frame)} runs in {run_wall:.0f} s ({run_wall / len(frame):.1f} s per run)")
COLS = ["train/novel_acc", "test/novel_acc", "test/known_acc", "test/all_acc"]
frame[["arm", "seed", *COLS, "wall_s"]]

# %% [markdown]
# ## 3. Results: mean ± std over seeds, paired differences against UNO (α = 0)
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against `uno`: the per-seed paired
# difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, else *within noise*. We also
# compare gate on against gate off directly (`crkd` − `crkd_nogate`).

# %%
summaries = {m: summarize(frame, m, baseline="uno") for m in COLS}
for metric, summary in summaries.items():
    display(Markdown(f"**{metric}**"), format_summary(summary))
gate_summary = summarize(frame[frame["arm"].isin(["crkd_nogate", "crkd"])], "train/novel_acc", baseline="crkd_nogate")
display(Markdown("**Gate on vs gate off (α = 0.1), train/novel_acc**"), format_summary(gate_summary))

# %%
for metric in ("train/novel_acc", "test/novel_acc"):
    arm_comparison(frame, metric, order=ORDER,
                   title=f"{metric}: mean ± std over {len(seeds)} seed(s), points = seeds").show()
    paired_differences(frame, "uno", metric, order=ORDER[1:],
                       title=f"paired difference of {metric} vs UNO (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 4. The teacher's class relations, the fading relation, the gate
#
# (a) The frozen stage-1 teacher's 5×5 relation matrix: for each novel digit, its mean
# known-class distribution softmax(z_known/(τT)) over the novel digit's training samples (seed
# shown; labels used only for this diagnostic). (b) The entropy of the *student's* known-head
# distribution on unlabelled samples over training, UNO vs Cr-KD: the paper's "fading relation"
# claim is that without KD this drifts away from the teacher's. (c) The gate per novel class at
# the last epoch (Cr-KD arm, all seeds).

# %%
first = frame[(frame["arm"] == "crkd") & (frame["seed"] == seeds[0])].iloc[0]
run = open_run(first["run_dir"])
matrix = run.load_artifact("relation_matrix").astype(float)
meta = run.artifacts(kind="relation").iloc[0]["meta"]
meta = meta if isinstance(meta, dict) else json.loads(meta)
fig = go.Figure(go.Heatmap(z=matrix.tolist(), x=meta["columns"], y=meta["rows"], colorscale="Blues",
                           text=np.round(matrix, 2).tolist(), texttemplate="%{text}"))
fig.update_layout(title=f"teacher's class relations: novel digit (rows) × known digit (columns), seed {seeds[0]}",
                  xaxis_title="known class", yaxis_title="novel class", height=380, template="plotly_white")
fig.show()
relation_entropy = pd.Series(-(matrix * np.log(np.clip(matrix, 1e-12, None))).sum(1), index=meta["rows"])
display(Markdown("**Entropy of each novel class's relation row (low = the class resembles one known class)**"),
        relation_entropy.round(3).to_frame("entropy"))

# %%
curves = collect_scalars(frame, ["train/known_entropy_novel", "train/novel_acc"])
per_epoch = curves.groupby(["arm", "seed", "key", "epoch"], as_index=False)["value"].mean()
arm_curves(per_epoch[per_epoch["arm"].isin(["uno", "crkd"])], "train/known_entropy_novel",
           title="entropy of the student's known-head distribution on unlabelled samples per epoch "
                 "(thin: seeds, thick: mean)").show()
arm_curves(per_epoch, "train/novel_acc",
           title="Hungarian accuracy on novel training samples per epoch (thin: seeds, thick: mean)").show()

# %%
digit_of = {k: name for k, name in enumerate(run.meta()["class_names"])}
gates = []
for r in frame[frame["arm"] == "crkd"].itertuples():
    rr = open_run(r.run_dir)
    last = max(rr.instance_epochs("train"))
    rows = rr.instances(split="train", epoch=last, columns=["label", "gate", "unlabelled"])
    rows = rows[rows["unlabelled"] == 1]
    gates.append(rows.assign(seed=r.seed, novel_class=rows["label"].map(digit_of)))
gates = pd.concat(gates, ignore_index=True)
arm_distributions(gates, "gate", group_col="novel_class",
                  title="gate u (renormalised) per novel class, last epoch, Cr-KD arm, all seeds").show()
gate_by_class = gates.groupby("novel_class")["gate"].mean()
display(Markdown("**Mean gate per novel class (last epoch, all seeds) next to the teacher's relation entropy**"),
        pd.DataFrame({"mean gate": gate_by_class.round(3),
                      "relation entropy (seed shown)": relation_entropy.reindex(gate_by_class.index).round(3)}))

# %% [markdown]
# ## 5. Does the gate help most for novel classes unlike any known class?
#
# The task-aware novel head's predictions are not recorded per instance, so per novel class we use
# the *test* split's recorded predictions (task-agnostic argmax over [known, novel]),
# Hungarian-matched over all classes per run, and compare gate on vs gate off per novel class.
# With one seed's relation matrix this is a descriptive check, not a test.

# %%
from scipy.optimize import linear_sum_assignment


def per_class_acc(run_dir):
    rr = open_run(run_dir)
    rows = rr.instances(split="test", columns=["label", "student_pred"])
    y, p = rows["label"].to_numpy(int), rows["student_pred"].to_numpy(int)
    table = np.zeros((10, 10), dtype=int)
    np.add.at(table, (y, p), 1)
    r_idx, c_idx = linear_sum_assignment(table, maximize=True)
    mapping = dict(zip(c_idx, r_idx))
    mapped = np.array([mapping[v] for v in p])
    return pd.Series([(mapped[y == c] == c).mean() for c in range(5, 10)], index=[digit_of[c] for c in range(5, 10)])


per_class = pd.concat([per_class_acc(r.run_dir).rename((r.arm, r.seed))
                       for r in frame[frame["arm"].isin(["crkd_nogate", "crkd"])].itertuples()], axis=1).T
per_class.index = pd.MultiIndex.from_tuples(per_class.index, names=["arm", "seed"])
gap = (per_class.xs("crkd", level="arm") - per_class.xs("crkd_nogate", level="arm"))
gap_table = pd.DataFrame({"gate on − off (mean over seeds)": gap.mean().round(4),
                          "std": gap.std(ddof=1).round(4) if len(gap) > 1 else np.nan,
                          "relation entropy (seed shown)": relation_entropy.reindex(gap.columns).round(3)})
display(Markdown("**Per novel class, test accuracy (Hungarian over all classes), gate on − gate off**"), gap_table)

# %% [markdown]
# ## 6. Verdict in words

# %%
def describe(summary, arm, other="uno"):
    return reporting.describe(summary, arm, f"{arm} − {other}")


n = len(seeds)
head = summaries["train/novel_acc"]
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    verdicts = {a: reporting.claim(head, a) for a in ORDER[1:]}
    up = [a for a, v in verdicts.items() if v == "holds"]
    down = [a for a, v in verdicts.items() if v == "contradicted"]
    if "crkd" in up:
        claim = "The paper's first claim **holds** here: Cr-KD (α = 0.1, gate on) raises novel clustering accuracy over UNO (resolved)."
    elif "crkd" in down:
        claim = "The paper's first claim is **contradicted** here: Cr-KD (α = 0.1, gate on) *lowers* novel clustering accuracy (resolved)."
    else:
        claim = "The paper's first claim is **not shown** here: Cr-KD (α = 0.1, gate on) does not change novel clustering accuracy beyond noise."
    others = [f"{a} {'up' if a in up else 'down'}" for a in up + down if a != "crkd"]
    claim += (" Other resolved arms: " + ", ".join(others) + "." if others else " No other arm is resolved against UNO.")
    gate = reporting.claim(gate_summary, "crkd")
    claim += (" Gate on vs off (α = 0.1), novel training accuracy: " + describe(gate_summary, "crkd", "crkd_nogate")
              + ("." if gate != "not shown" else " (the gate's contribution is not resolved).")
              + (" The gate does not help here." if gate != "holds" else ""))
ent = per_epoch[per_epoch["key"] == "train/known_entropy_novel"]
last_ent = ent[ent["epoch"] == ent["epoch"].max()].groupby("arm")["value"].mean()
unlike = relation_entropy.idxmax()
gap_text = (f"The novel class least like any single known class (highest relation entropy, seed {seeds[0]}) is "
            f"{unlike}; its gate-on − gate-off test-accuracy gap is {gap.mean()[unlike]:+.4f} against a mean gap of "
            f"{gap.mean().mean():+.4f} over the novel classes" if len(gap) else "")
verdict_text = (
    f"Cr-KD over {n} seed(s), paired against UNO (α = 0). Novel clustering accuracy on training samples: "
    + "; ".join(describe(head, a) for a in ORDER[1:]) + ". Test novel accuracy: "
    + "; ".join(describe(summaries["test/novel_acc"], a) for a in ORDER[1:]) + ". Test all-class accuracy: "
    + "; ".join(describe(summaries["test/all_acc"], a) for a in ORDER[1:]) + ". " + claim
    + f" Last-epoch entropy of the known-head distribution on unlabelled samples: UNO {last_ent.get('uno', float('nan')):.3f}, "
    f"Cr-KD {last_ent.get('crkd', float('nan')):.3f}. " + gap_text + " (one seed's relation matrix; a descriptive "
    "check of the second claim, not a test). Miniature deviations from the reference setting: CNN width "
    f"{base['student']['params']['width']}, batch {base['data']['batch_size']}, "
    f"{base['distill']['params']['stage1_epochs']} + {base['epochs']} epochs.")
display(Markdown(verdict_text))

# %% [markdown]
# ## 7. Save the results

# %%
ctx.save(results_path, [(summaries[m], "uno") for m in COLS] + [(gate_summary, "crkd_nogate")],
         title="Cr-KD (paper 10): class-relation KD for novel class discovery on digits (0-4 known, 5-9 novel)",
         notes=verdict_text.replace("**", ""))
wall = ctx.wall_s
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {wall:.0f} s")
