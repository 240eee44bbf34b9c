# %% [markdown]
# # ORC-style group distillation with online role change, in miniature (paper 27 of the ICCV 2023 list)
#
# **The method.** ORC (ICCV 2023) splits a set of networks into a *teacher group* and a *student
# group*; at every iteration the top-ranked students are promoted into the teacher group, the
# teacher group is refined on the students' error samples, and the group's collective knowledge
# is distilled into the remaining students. The paper's code is not public, so **the whole
# algorithm here is a reconstruction** (*inferred*): this notebook tests an *ORC-style*
# trainer, not the paper's.
#
# **The reconstruction** (`method: orc`, `kd_engine/methods/orc.py`, whose evaluation hook
# reports the validation-selected member). Networks: T0 (pretrained) and students S1…S4. Each step:
# 1. rank the students by batch CE; the best (r = 1) joins T0 in the teacher group G for this step;
# 2. the error set E = the batch samples the student ensemble (mean softmax) misclassifies;
# 3. every member of G trains with CE on E; T0's term is scaled by 0.1 (≈ a 0.1× learning rate);
# 4. p_G = mean over G of softmax(z/T); 5. every other student minimises CE + T²·KL(p_G ‖ q_S), T = 4.
#
# **"The student" reported** is the student-group member with the best *validation* accuracy at
# the last epoch (`test/student_acc`); we also report the mean over the four students
# (`test/student_mean_acc`). The test split is never used to select.
#
# **The miniature** (`configs/orc_digits.yaml`): digits, test 30 % (540 images), validation 10 %
# (180, for the selection; the planned 1257 training images become 1077), T0 = MLP 64–256–10
# pretrained 30 epochs on each seed's training split, students MLP 64–{32, 32, 48, 24}–10,
# 40 epochs, SGD lr 0.05 cosine, batch 64.
#
# **Arms** (same group, same seeds, same initialisation; only `distill.params.mode` differs):
# `independent` (each student CE only: **the baseline**), `kd` (CE + KD from the frozen T0),
# `dml` (deep mutual learning: CE + mean T²·KL towards every other student), `orc`.
#
# **Claim to test (the paper's):** ORC beats the multi-teacher and online baselines; expect small
# differences at this scale. Paper's claim (ResNet-18 on ImageNet, top-1 error 30.25 → 28.00) is
# the paper's, not a target.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs (plumbing; no verdict). `full`: 5 seeds, the config's
# epochs (4 arms × 5 seeds + 5 teachers), measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs (plumbing check); "full": 5 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import time

import yaml
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.experiment import collect_scalars, format_summary, setup, summarize
from kd_engine.reporting import claims
from kd_engine.store import open_run
from workbench.figures import arm_comparison, arm_curves, paired_differences
from workbench.figures.roles import member_curves, role_share, role_timeline

ctx = setup("p27_orc", "configs/orc_digits.yaml", budget, seeds=5, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
print("(see the Roles page of the dashboard)")

# %% [markdown]
# ## 1. The config and the arms

# %%
print(yaml.safe_dump({k: base[k] for k in ("data", "teacher", "student", "distill", "optimizer", "epochs")},
                     sort_keys=False))
ARMS = ["independent", "kd", "dml", "orc"]
arms = {mode: {"distill.params.mode": mode} for mode in ARMS}
STUDENTS = [f"S{i + 1}" for i in range(len(base["distill"]["params"]["students"]))]

# %% [markdown]
# ## 2. Teachers (one per seed, trained on that seed's training split, cached), then the arms

# %%
teachers = ctx.prepare_teachers()
t_students = time.perf_counter()
frame = ctx.run_arms(arms)
student_wall = time.perf_counter() - t_students
print(f"{len(frame)} group runs in {student_wall:.0f} s ({student_wall / len(frame):.1f} s per run of "
      f"{len(STUDENTS)} students)")
frame["reported"] = [open_run(d).meta().get("reported_student") for d in frame["run_dir"]]
frame[["arm", "seed", "reported", "test/student_acc", "test/student_mean_acc", "test/teacher_acc",
       "test/member/T0_acc", "wall_s"]]

# %% [markdown]
# ## 3. Results: mean ± std over seeds, paired differences against independent training
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against `independent`: the per-seed
# paired difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, else *within noise*.
# Two metrics: the reported (validation-selected) student's test accuracy and the mean test
# accuracy of the four students (last epoch).

# %%
SEL, MEAN = "test/student_acc", "test/student_mean_acc"
sel_summary = summarize(frame, SEL, baseline="independent")
mean_summary = summarize(frame, MEAN, baseline="independent")
display(Markdown("**Reported student (best validation accuracy): test accuracy**"), format_summary(sel_summary))
display(Markdown("**Mean test accuracy of the four students**"), format_summary(mean_summary))
per_member = frame.melt(id_vars=["arm", "seed"], value_vars=[f"test/member/{s}_acc" for s in STUDENTS],
                        var_name="member", value_name="test_acc")
per_member["member"] = per_member["member"].str.slice(len("test/member/"), -len("_acc"))
display(Markdown("**Per-member test accuracy, mean over seeds**"),
        per_member.pivot_table(index="arm", columns="member", values="test_acc").reindex(ARMS).round(4))

# %%
for metric, what in ((SEL, "reported student"), (MEAN, "mean of the 4 students")):
    arm_comparison(frame, metric, order=ARMS,
                   title=f"test accuracy, {what}: mean ± std over {len(seeds)} seed(s), points = seeds "
                         "(ORC arm: reconstruction)").show()
    paired_differences(frame, "independent", metric, order=ARMS[1:],
                       title=f"paired difference vs independent, {what} (band: mean ± 2·std/√n; "
                             "ORC arm: reconstruction)").show()

# %% [markdown]
# ## 4. Roles over time (ORC arm)
#
# The group trainer records `role/<member>` every step (1 = in the teacher group). Below: the
# role timeline of one seed, the share of steps each student spent promoted (its promotion
# frequency) over all seeds, and the teacher group's accuracy on the error set E (how often
# p_G is right where the student ensemble is wrong; per epoch, pooled over seeds).

# %%
orc_runs = frame[frame["arm"] == "orc"]
roles = collect_scalars(orc_runs, [f"role/{m}" for m in ["T0", *STUDENTS]], tags=["seed"])
role_timeline(roles[roles["seed"] == seeds[0]],
              title=f"role timeline (reconstruction), ORC arm, seed {seeds[0]}: teacher group per step").show()
role_share(roles[roles["key"] != "role/T0"], by="seed",
           title="share of steps each student was promoted into the teacher group (reconstruction)").show()
shares = (roles[roles["key"] != "role/T0"].groupby(["seed", "key"])["value"].mean().unstack())
shares.columns = [c.split("/", 1)[1] for c in shares.columns]
display(Markdown("**Promotion frequency per student and seed**"), shares.round(3))

# %%
err = collect_scalars(orc_runs, ["train/error_count", "train/group_correct_on_E"], tags=["seed"])
per_epoch = err.pivot_table(index=["seed", "epoch"], columns="key", values="value", aggfunc="sum").reset_index()
pooled = per_epoch.groupby("epoch")[["train/error_count", "train/group_correct_on_E"]].sum()
pooled["group_acc_on_E"] = pooled["train/group_correct_on_E"] / pooled["train/error_count"].where(
    pooled["train/error_count"] > 0)
total_e = int(per_epoch["train/error_count"].sum())
group_acc_e = float(per_epoch["train/group_correct_on_E"].sum()) / max(total_e, 1)
last_e_epoch = per_epoch.loc[per_epoch["train/error_count"] > 0, "epoch"]
display(Markdown("**Error set E per epoch (pooled over seeds): size and the teacher group's accuracy on it**"),
        pooled.round(3))
print(f"E over all ORC steps: {total_e} samples; teacher group p_G right on {group_acc_e:.3f} of them; "
      f"E is non-empty until epoch {int(last_e_epoch.max()) if len(last_e_epoch) else -1}")

# %% [markdown]
# ## 5. Accuracy curves: the members' validation accuracy per epoch (ORC vs independent), and T0

# %%
member_keys = [f"val/member/{m}_acc" for m in ["T0", *STUDENTS]]
curves = collect_scalars(frame, member_keys + ["val/student_mean_acc"])
member_curves(curves[curves["arm"] == "orc"],
              title="ORC arm (reconstruction): validation accuracy of each member, mean over seeds").show()
arm_curves(curves, "val/student_mean_acc",
           title="mean validation accuracy of the 4 students per epoch (thin: seeds, thick: mean)").show()
t0 = frame[frame["arm"] == "orc"][["seed", "test/teacher_acc", "test/member/T0_acc"]]
t0_diff = (t0["test/member/T0_acc"] - t0["test/teacher_acc"])
display(Markdown("**T0 before (frozen, pretrained) and after refinement on E (ORC arm), test accuracy**"),
        t0.rename(columns={"test/teacher_acc": "T0 pretrained", "test/member/T0_acc": "T0 refined"}))

# %% [markdown]
# ## 6. Verdict in words

# %%
def describe(summary, arm, other="independent"):
    return reporting.describe(summary, arm, f"{arm} − {other}", words=("better", "worse"))


n = len(seeds)
orc_vs = {}
for other in ("kd", "dml"):
    orc_vs[other] = summarize(frame[frame["arm"].isin(["orc", other])], SEL, baseline=other)
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    verdicts = claims(orc_vs, "orc")
    beats, loses = verdicts["holds"], verdicts["contradicted"]
    if len(beats) == 2:
        claim = "The paper's claim **holds** here: ORC-style training beats both KD from T0 and DML (resolved)."
    elif loses:
        claim = (f"The paper's claim is **contradicted** here: ORC-style training is resolved *worse* than "
                 f"{' and '.join(loses)}" + (f" (and resolved better than {', '.join(beats)})." if beats else "."))
    else:
        claim = ("The paper's claim is **not shown** here: ORC-style training does not beat "
                 + " and ".join(o for o in orc_vs if o not in beats) + " beyond noise"
                 + (f" (it does beat {', '.join(beats)})." if beats else "."))
lines = [describe(sel_summary, a) for a in ARMS[1:]]
mean_lines = [describe(mean_summary, a) for a in ARMS[1:]]
vs_lines = [describe(orc_vs[o], "orc", o) for o in orc_vs]
n_test = len(open_run(frame["run_dir"].iloc[0]).instances(split="test", columns=["instance_id"]))
promo = shares.mean().round(3).to_dict() if len(shares) else {}
t0_text = (f"Refining T0 on E changed its test accuracy by {t0_diff.mean():+.4f} on average "
           f"(pretrained {t0['test/teacher_acc'].mean():.4f} → refined {t0['test/member/T0_acc'].mean():.4f})")
last_epoch = int(per_epoch["epoch"].max())
e_until = int(last_e_epoch.max()) if len(last_e_epoch) else -1
e_text = (f"E was non-empty in every epoch (last epoch {last_epoch})." if e_until == last_epoch else
          f"E was empty in every step after epoch {e_until} (of 0–{last_epoch}) on every seed: from then on "
          "the teacher group was no longer refined and ORC reduced to KD from the mean of T0 and the "
          "best-ranked student.")
verdict_text = (
    f"ORC-style (reconstruction) over {n} seed(s). Reported student (best validation accuracy), test accuracy, "
    f"paired against independent training: " + "; ".join(lines) + ". Mean of the 4 students: "
    + "; ".join(mean_lines) + ". ORC against the multi-teacher/online baselines (reported student): "
    + "; ".join(vs_lines) + ". " + claim + f" Promotion frequency per student (share of steps, mean over seeds): "
    f"{promo}. The teacher group's p_G was right on {group_acc_e:.3f} of the {total_e} error-set samples. "
    f"{e_text} {t0_text}. The test split has {n_test} images, so one image is {1 / n_test:.4f} of accuracy.")
display(Markdown(verdict_text))

# %% [markdown]
# ## 7. Save the results
#
# `kdw reproduce` passes `results_path`; the JSON holds the summaries above (schema in
# `docs/NOTEBOOKS.md`) and becomes this notebook's section of `docs/results.md` at the full budget.

# %%
ctx.save(results_path,
         [(sel_summary, "independent"), (mean_summary, "independent"), (orc_vs["kd"], "kd"),
          (orc_vs["dml"], "dml")],
         title="ORC-style group distillation with online role change (paper 27, reconstruction) on digits "
               "(T0 MLP 256 → students MLP 32/32/48/24)",
         notes=verdict_text.replace("**", ""))
wall = ctx.wall_s
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} group runs + {len(teachers)} teacher(s) in {wall:.0f} s")
