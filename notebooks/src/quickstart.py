# %% [markdown]
# # Quickstart: knowledge distillation on digits
#
# This notebook walks through the whole workbench on scikit-learn's bundled **digits** (1797
# images of 8×8, 10 classes):
#
# 1. the engine trains a **teacher** (a ResNet of width 32) and caches it;
# 2. a **student** four times narrower (a ResNet of width 8) is trained twice per seed, once on
#    the labels alone (**scratch**) and once with Hinton's distillation term (**kd**:
#    cross-entropy + T²·KL(p_T^τ ‖ p_S^τ), τ = 4, weight 1);
# 3. the arms are compared over the same seeds with the workbench's reporting rule, and we look
#    inside the runs: training curves from the run store and per-instance records.
#
# Everything comes from `configs/digits_kd.yaml`; only the method differs between the two student
# arms. The seed fixes the data split, the initialisation and the batch order, so arms are
# compared **per seed** (paired).
#
# **Budgets.** `smoke` (1 seed, 2 epochs) only checks that the plumbing works and cannot give a
# verdict. `full` uses 5 seeds and the config's epochs (15 for students, 20 for the teacher) and
# measures its own wall time: about 2¼ minutes on the 2-core reference CPU (136 s for 5 teachers
# and 10 student runs, one torch thread each; the smoke budget takes about 15 s). Run it with
# `kdw reproduce quickstart --budget full`, which also regenerates `docs/results.md`.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs (plumbing check); "full": 5 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import pandas as pd
import yaml
from IPython.display import Markdown, display

from kd_engine.experiment import (collect_instances, collect_scalars, format_summary, reference_arm, setup,
                                  summarize)
from kd_engine.reporting import claim
from workbench.figures import arm_comparison, arm_curves, arm_distributions, paired_differences

ctx = setup("quickstart", "configs/digits_kd.yaml", budget, seeds=5, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base

# %% [markdown]
# ## 1. The experiment config
#
# The parts that matter: the teacher, the student, and the distillation term. `setup` applies the
# budget, which only changes epochs and threads; the arms below change only `method`.

# %%
print(yaml.safe_dump({k: base[k] for k in ("teacher", "student", "distill", "optimizer", "epochs")},
                     sort_keys=False))

# %% [markdown]
# ## 2. Teachers: trained by the engine, cached
#
# A teacher is identified by its model, its training settings and the **data split** it saw. The
# split follows the seed, so each seed gets its own teacher (trained on that seed's training split
# only; it never sees the test split). Training a teacher is an ordinary `scratch` run, recorded
# in the run store like any other; its weights are then cached under `cache_dir` by the hash of
# that identity, so both student arms (and any re-run) load it instead of retraining.

# %%
teachers = ctx.prepare_teachers()
teachers

# %% [markdown]
# ## 3. Two student arms on the same seeds
#
# * **scratch**: the student trained on the labels alone. The teacher is only *observed* (its
#   per-instance loss is recorded), it does not influence training.
# * **kd**: the same student, same seed, same optimiser, plus the KD term.
#
# `run_arms` trains every arm at every seed and returns one row per arm × seed with the run's
# final metrics (last epoch; nothing is selected on the test split).

# %%
arms = {"scratch": {"method": "scratch"}, "kd": {"method": "standard"}}
frame = ctx.run_arms(arms)
frame[["arm", "seed", "run_id", "wall_s", "test/student_acc", "test/teacher_acc"]]

# %% [markdown]
# ## 4. Results: mean ± std over seeds, and the paired KD − scratch difference
#
# The teacher is not trained in this step: its test accuracy is read from the KD runs (it is
# frozen, so it is the same value the scratch run of that seed reports).
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against the baseline (scratch): the
# per-seed paired difference, mean ± std. An effect is *resolved* only if |mean diff| > 2·std/√n
# of the paired differences; otherwise it is *within noise*, whatever the ordering of the means.

# %%
metric = "test/student_acc"
results = pd.concat([reference_arm(frame, "kd", "teacher"), frame], ignore_index=True)
summary = summarize(results, metric, baseline="scratch")
format_summary(summary)

# %%
arm_comparison(results, metric, order=["teacher", "scratch", "kd"],
               title=f"test accuracy: mean ± std over {len(seeds)} seed(s), points = seeds").show()
paired_differences(results, "scratch", metric, order=["kd", "teacher"],
                   title="paired test-accuracy difference vs scratch (band: mean ± 2·std/√n)").show()

# %%
kd = summary.set_index("arm").loc["kd"]
n = int(kd["n"])
if n < 2:
    verdict_text = (f"Only {n} seed at the `{budget}` budget: no verdict is possible. On this seed "
                    f"KD − scratch = {kd['diff_mean']:+.4f} test accuracy. Run the full budget.")
elif claim(summary, "kd") != "not shown":
    direction = "beats" if claim(summary, "kd") == "holds" else "is worse than"
    verdict_text = (f"**KD {direction} scratch (resolved):** paired KD − scratch test accuracy "
                    f"{kd['diff_mean']:+.4f} ± {kd['diff_std']:.4f} over {n} seeds, beyond the "
                    f"2·std/√n threshold of {kd['threshold']:.4f}.")
else:
    verdict_text = (f"**Within noise:** paired KD − scratch test accuracy {kd['diff_mean']:+.4f} ± "
                    f"{kd['diff_std']:.4f} over {n} seeds does not exceed the 2·std/√n threshold of "
                    f"{kd['threshold']:.4f}. At this scale KD is **not shown to beat** training the "
                    f"student from scratch.")
display(Markdown(verdict_text))

# %% [markdown]
# ## 5. Inside the runs: curves from the run store
#
# Every run records its scalars (per step and per epoch) in its store. `Run.scalars()` returns
# them in long format; we tag them with arm and seed and average the per-step values per epoch.
# `train/student_loss` is the student's cross-entropy on its training batches in both arms, so
# the curves are comparable; `val/student_acc` is measured at the end of every epoch.

# %%
keys = ["val/student_acc", "train/student_loss", "train/term/kd"]
curves = collect_scalars(frame, keys)
per_epoch = curves.groupby(["arm", "seed", "key", "epoch"], as_index=False)["value"].mean()
arm_curves(per_epoch, "val/student_acc", title="validation accuracy of the student per epoch").show()
arm_curves(per_epoch, "train/student_loss", title="student cross-entropy on training batches").show()

# %% [markdown]
# ## 6. Inside the runs: per-instance records
#
# The store also keeps one record per training instance per epoch (losses, confidences,
# predictions). Below: how the KD term is spread over the training instances in the first and
# the last epoch of the KD arm (all seeds pooled). A long tail means a few instances (those the
# student and teacher disagree on) carry much of the distillation signal.

# %%
last = base["epochs"] - 1
kd_runs = frame[frame["arm"] == "kd"]
inst = collect_instances(kd_runs, split="train", columns=["instance_id", "epoch", "term_kd"], tags=["seed"])
inst = inst[inst["epoch"].isin([0, last])].copy()
inst["when"] = inst["epoch"].map(lambda e: f"epoch {e + 1}")
arm_distributions(inst, "term_kd", group_col="when", log_y=True,
                  title="per-instance KD term T²·KL on the training split (kd arm)").show()
final = inst[inst["epoch"] == last]["term_kd"].sort_values(ascending=False)
top = final.head(max(1, len(final) // 10)).sum() / max(final.sum(), 1e-12)
print(f"last epoch: the 10% of training instances with the largest KD term carry {top:.0%} of it")

# %% [markdown]
# On the **test split** each run records the final per-instance predictions. Pairing the two
# student arms instance by instance shows where KD helps and where it hurts: how many test
# images only the KD student gets right, and how many only the scratch student gets right.

# %%
test = collect_instances(frame, split="test", columns=["instance_id", "label", "student_pred", "student_loss"])
test["correct"] = test["student_pred"] == test["label"]
paired = test.pivot_table(index=["seed", "instance_id"], columns="arm", values="correct", aggfunc="first").astype(bool)
flips = pd.DataFrame({"only kd right": (paired["kd"] & ~paired["scratch"]).groupby("seed").sum(),
                      "only scratch right": (~paired["kd"] & paired["scratch"]).groupby("seed").sum(),
                      "both wrong": (~paired["kd"] & ~paired["scratch"]).groupby("seed").sum(),
                      "test images": paired.groupby("seed").size()})
display(flips)
arm_distributions(test, "student_loss", group_col="arm", log_y=True,
                  title="per-instance test cross-entropy of the student, by arm").show()

# %% [markdown]
# ## 7. The same distillation from Python
#
# `kd_engine.distill` takes `nn.Module`s and datasets (or DataLoaders) of `(x, y)` or
# `(x, y, id)` instead of a config, and records into the same run store, so `kdw runs` lists the
# run and the dashboard shows it like the ones above. Here: seed 0's cached teacher, the student
# the config would build, and the digits splits as plain `TensorDataset`s. With the same initial
# weights, batches and settings it is the same computation as the kd arm's run at that seed,
# so the two test accuracies below are the same number.

# %%
import kd_engine
from torch.utils.data import TensorDataset
from kd_engine.data import build_data
from kd_engine.experiment import arm_config
from kd_engine.models import build_model
from kd_engine.trainers.runtime import seed_everything
from kd_engine.weights import load_into

cfg = arm_config(base, {}, seeds[0], ctx.runs_dir, ctx.cache_dir)
seed_everything(cfg.seed)  # the random state `kdw train` builds the student in
data = build_data(cfg.data, cfg.seed)
student = build_model(cfg.student, data.input_shape, data.num_classes)
teacher = build_model(cfg.teacher, data.input_shape, data.num_classes)
load_into(teacher, teachers["cache_path"][0])
train, val, test = (TensorDataset(s.x, s.y, s.ids) for s in (data.train, data.val, data.test))

run = kd_engine.distill(teacher, student, train, val, test_data=test, terms=base["distill"]["terms"],
                        optimizer=base["optimizer"], schedule=base["schedule"], epochs=cfg.epochs,
                        batch_size=cfg.data.batch_size, seed=cfg.seed, threads=cfg.threads,
                        runs_dir=ctx.runs_dir, name="quickstart-api", class_names=data.class_names,
                        teacher_spec=base["teacher"], student_spec=base["student"])
config_run = frame[(frame["arm"] == "kd") & (frame["seed"] == seeds[0])].iloc[0]
api_acc = run.final_metrics()["test/student_acc"]
print(f"test accuracy, seed {seeds[0]}: kd arm (config) {config_run['test/student_acc']:.4f}, "
      f"Python API {api_acc:.4f}; same number: {api_acc == config_run['test/student_acc']}")

# %% [markdown]
# `kd_engine.make_trainer` takes the same arguments and returns the trainer instead of running it:
# `trainer.fit(steps=N)` advances N optimisation steps and the next call continues where it
# stopped, for use inside another loop or a benchmark.

# %% [markdown]
# ## 8. Save the results
#
# `kdw reproduce` passes `results_path`; the JSON holds the summary rows above (schema in
# `docs/NOTEBOOKS.md`) and becomes this notebook's section of `docs/results.md` for the full budget.

# %%
ctx.save(results_path, [(summary, "scratch")], title="Quickstart: Hinton KD on digits (ResNet width 32 → width 8)",
         notes=verdict_text.replace("**", ""))
wall = ctx.wall_s
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} student runs + {len(teachers)} teacher(s) "
      f"in {wall:.0f} s")
