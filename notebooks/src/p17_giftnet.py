# %% [markdown]
# # GiftNet: harmonization with global guidance and relation distillation, in miniature
#
# **The method.** A composite image pastes a foreground that was lit differently from its
# background; harmonization re-lights the foreground. Paper 17 (GiftNet) adds two things to a
# harmonization network: **global guidance**, background information that steers how the
# foreground features are transformed, and **relation distillation**: the relation between
# foreground and background features of the *real* image (the target) supervises the same
# relation in the composite's transformed features. In the engine: task `harmonization`
# (`kd_engine/tasks/harmonization.py`), dataset `composites` (`kd_engine/data/composites.py`),
# model `film_unet` (`kd_engine/models/film_unet.py`), method `giftnet`
# (`kd_engine/methods/giftnet.py`), losses in `kd_engine/losses/harmonization.py`.
#
# **Reconstruction** (no model code is public; the paper's abstract and introduction describe
# the ideas, not their forms): the guidance is FiLM at the bottleneck inside the foreground,
# F̃ = F + m·(γ(g)·F + β(g)) with g the background-average feature; the relation is
# R[i, k] = cos(F_i, b_k) between each foreground position i and 4 background prototypes b_k
# (quadrant averages); the teacher path is the same encoder on the real image under
# stop-gradient; L = MSE + fMSE + λ·mean|R(F̃_comp) − sg(R(E(I_real)))|, λ = 1.
#
# **The miniature** (`configs/giftnet_composites.yaml`): 24×24 RGB composites. Albedos are
# near-grey: a background gradient with 2–4 shapes and one foreground shape; an illumination is
# a per-channel gain in [0.6, 1.4] and a gamma in [0.7, 1.4]. The real image renders the scene
# under one illumination, the composite renders the foreground under a second draw. The U-Net
# (8 / 16 / 32 channels) reads [composite, mask] and predicts a correction inside the mask;
# Adam 3e-3, batch 32, 800 training composites, 10 epochs.
#
# **Arms** (same seeds: data, initialisation and batch order):
#
# * `plain`: the U-Net with the reconstruction loss, **the baseline**;
# * `film`: + FiLM global guidance;
# * `film_relation`: + FiLM + relation distillation (λ = 1).
#
# **Claims to test:** fMSE of `film` below `plain`; `film_relation` no higher than `film`.
# Metrics on the 300 test composites: fMSE (error over foreground pixels), MSE and PSNR; the
# untouched composite is the "do nothing" reference.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, a small data set (plumbing only). `full`: 3 seeds.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs, small data; "full": 3 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs go here (None: a fresh temporary directory)

# %%
import os
import resource

import numpy as np
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.experiment import arm_config, collect_instances, format_summary, setup, summarize
from kd_engine.losses.harmonization import relations
from kd_engine.models import build_model
from kd_engine.store import open_run
from workbench.figures import arm_comparison, harmonization_panels, paired_differences, relation_heatmaps

ctx = setup("p17_giftnet", "configs/giftnet_composites.yaml", budget, seeds=3, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
if budget == "smoke":
    base["data"]["params"].update(n_train=64, n_val=16, n_test=32)
base["record"] = {"instances": True, "eval_instances": True, "attention_maps": 4, "feature_probe_size": 16,
                  "tensorboard": False}
WORKERS = 1 if budget == "smoke" else 2
ARMS = {"plain": {"student.params.film": False, "distill.params.relation_weight": 0.0},
        "film": {"student.params.film": True, "distill.params.relation_weight": 0.0},
        "film_relation": {"student.params.film": True, "distill.params.relation_weight": 1.0}}
frame = ctx.run_arms(ARMS, verbose=False, workers=WORKERS)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s of run time")
FMSE, MSE, PSNR = "test/student_fmse", "test/student_mse", "test/student_psnr"
composite = frame.iloc[0]
print(f"the untouched composite (test): fMSE {composite['test/composite_fmse']:.4f}, MSE {composite['test/composite_mse']:.5f}, "
      f"PSNR {composite['test/composite_psnr']:.2f} dB")
display(frame.pivot_table(index="seed", columns="arm", values=[FMSE, MSE, PSNR]).round(5))

# %% [markdown]
# ## 1. fMSE, MSE and PSNR per arm
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds; against the baseline, the per-seed
# paired difference, *resolved* only if |mean diff| > 2·std/√n, otherwise *within noise*.
# Lower is better for fMSE and MSE. `film_relation` is also compared with `film` directly.

# %%
METRICS = {"fMSE": FMSE, "MSE": MSE, "PSNR": PSNR}
vs_plain = {label: summarize(frame, metric, baseline="plain") for label, metric in METRICS.items()}
vs_film = {label: summarize(frame[frame["arm"] != "plain"], metric, baseline="film") for label, metric in METRICS.items()}
for label in METRICS:
    display(Markdown(f"**{label}** (baseline `plain`)"), format_summary(vs_plain[label]))
    display(Markdown(f"**{label}** (baseline `film`)"), format_summary(vs_film[label]))
arm_comparison(frame, FMSE, order=list(ARMS),
               title=f"test fMSE (lower is better): mean ± std over {len(seeds)} seed(s), points = seeds").show()
paired_differences(frame, "plain", FMSE, order=["film", "film_relation"],
                   title="paired difference of test fMSE vs plain (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 2. The relation loss during training
#
# Every arm records L_rel per training image, also where it is not optimised (λ = 0): how far
# the composite's foreground–background relations are from the real image's, per epoch.

# %%
rows = collect_instances(frame, split="train", columns=["epoch", "relation", "fmse"])
fig = go.Figure()
for arm, part in rows.groupby("arm", sort=False):
    curve = part.groupby("epoch")["relation"].mean()
    fig.add_scatter(x=curve.index.tolist(), y=curve.tolist(), mode="lines+markers", name=arm)
fig.update_layout(title="mean relation loss L_rel on training composites (all seeds; reconstruction)", xaxis_title="epoch",
                  yaxis_title="mean |R(F̃_comp) − R(F_real)|", template="plotly_white").show()
last = rows[rows["epoch"] == rows["epoch"].max()].groupby("arm")["relation"].mean()

# %% [markdown]
# ## 3. Examples and relation matrices, before and after training
#
# The last seed's `film_relation` run: composite, output and real image of a few test probes,
# and the relation matrices (foreground cells × 4 background prototypes) on the real image and on
# the composite's transformed features, for a freshly initialised network and for the trained one.

# %%
row = frame[(frame["arm"] == "film_relation") & (frame["seed"] == seeds[-1])].iloc[0]
run = open_run(row["run_dir"])
arrays = {name.rsplit("/", 1)[-1]: run.load_artifact(name).astype(float) for name in run.artifacts("harmonization")["name"]}
for k in range(min(3, len(arrays["composite"]))):
    error = ((arrays["output"][k] - arrays["real"][k]) ** 2).mean(axis=0)
    harmonization_panels({"composite": arrays["composite"][k], "output": arrays["output"][k], "real": arrays["real"][k],
                          "mask": arrays["mask"][k], "error": error},
                         title=f"film_relation, test probe {k}: composite, output, real").show()
cfg = arm_config(base, ARMS["film_relation"], seeds[-1], ctx.runs_dir, ctx.cache_dir)
torch.manual_seed(seeds[-1])
fresh = build_model(cfg.student, (4, *arrays["composite"].shape[-2:]), 3).eval()
comp_x = torch.as_tensor(np.concatenate([arrays["composite"][:1], arrays["mask"][:1, None]], 1), dtype=torch.float32)
real_x = torch.as_tensor(np.concatenate([arrays["real"][:1], arrays["mask"][:1, None]], 1), dtype=torch.float32)
with torch.no_grad():
    _, before_comp, fg = relations(fresh, comp_x, "transformed")
    _, before_real, _ = relations(fresh, real_x, "encoder")
rows_fg = fg.flatten(1)[0] > 0.5
relation_heatmaps({"real, before": before_real[0][rows_fg].numpy(), "composite, before": before_comp[0][rows_fg].numpy(),
                   "real, after": arrays["relation_real"][0][rows_fg.numpy()],
                   "composite, after": arrays["relation_composite"][0][rows_fg.numpy()]},
                  title="foreground–background relations of test probe 0, before and after training (reconstruction)").show()

# %% [markdown]
# ## 4. Verdict in words
#
# **What the miniature can say:** on procedural composites whose only inconsistency is a global
# re-lighting of the foreground, whether background-conditioned FiLM lowers the foreground error
# of a small U-Net beyond the noise of 3 seeds, and whether relation distillation from the real
# image adds to it. **What it cannot say:** anything about iHarmony4 / ccHarmony photographs,
# local lighting, shadows, or the paper's numbers; the forms of the guidance and of the relation
# loss are our reconstruction, and a U-Net whose bottleneck already sees most of a 24×24 image
# has global context without FiLM, which limits what guidance can add here.

# %%
describe = reporting.describe
n = len(seeds)
lines = [describe(vs_plain["fMSE"], arm, f"{arm} − plain, fMSE", words=("lower", "higher"), lower_is_better=True)
         for arm in ("film", "film_relation")]
lines += [describe(vs_plain["PSNR"], arm, f"{arm} − plain, PSNR") for arm in ("film", "film_relation")]
lines.append(describe(vs_film["fMSE"], "film_relation", "film_relation − film, fMSE", words=("lower", "higher"),
                      lower_is_better=True))
if n < 2:
    claim_text = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    film_claim = reporting.claim(vs_plain["fMSE"], "film", lower_is_better=True)
    relation_row = vs_film["fMSE"].set_index("arm").loc["film_relation"]
    no_higher = "contradicted" if relation_row["verdict"] == "resolved" and relation_row["diff_mean"] > 0 else "holds"
    claim_text = (f"Claim 'fMSE of film below plain': {film_claim}. Claim 'film_relation no higher than film': "
                  f"{no_higher} ({relation_row['verdict']}).")
means = frame.groupby("arm")[[FMSE, PSNR]].mean()
verdict_text = (f"Over {n} seed(s): " + "; ".join(lines) + ". " + claim_text + " Mean test fMSE / PSNR: "
                + ", ".join(f"{a} {means.loc[a, FMSE]:.4f} / {means.loc[a, PSNR]:.2f} dB" for a in ARMS)
                + f"; the untouched composite {composite['test/composite_fmse']:.4f} / {composite['test/composite_psnr']:.2f} dB."
                + " Relation loss at the last epoch: " + ", ".join(f"{a} {last[a]:.4f}" for a in ARMS) + ".")
display(Markdown(verdict_text))

# %% [markdown]
# ## 5. Save the results

# %%
load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # the CPU may be shared: say how busy it was
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(u.ru_utime + u.ru_stime for u in usage)
ctx.save(results_path, [(vs_plain[label], "plain") for label in METRICS] + [(vs_film[label], "film") for label in METRICS],
         title="GiftNet: FiLM global guidance and foreground-background relation distillation for harmonization, "
               "procedural composites (reconstruction: FiLM at the bottleneck, quadrant-prototype cosine relations, "
               "stop-gradient real-image path)",
         notes=verdict_text.replace("**", "") + f" Wall time {ctx.wall_s:.0f} s with {WORKERS} run(s) at a time; "
               f"load average (1, 5, 15 min) at the end: {load}; CPU time of the notebook and its workers {cpu:.0f} s.")
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {ctx.wall_s:.0f} s; load average {load}; CPU {cpu:.0f} s")
