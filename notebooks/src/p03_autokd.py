# %% [markdown]
# # Auto-KD: Monte Carlo tree search over distillers, in miniature (paper 3 of the ICCV 2023 list)
#
# **The method.** Auto-KD (Li et al., ICCV 2023) writes a distiller as a path of discrete choices
# and searches that tree with Monte Carlo tree search (MCTS), using cheap proxy trainings as the
# reward. Our reading of the paper rests on its **abstract only**: the search space and the reward below are a
# **reconstruction**, not the authors' code.
#
# * **Distiller** (`method: autokd`, `kd_engine/methods/autokd.py`):
#   L = CE(z_S, y) + λ · d(φ(A(F_S)), φ(F_T)) at `layer2` of both CNNs, A a 1×1 conv adapter.
# * **Tree levels** (our reconstructed space, 6 × 6 × 3 × 4 = 432 distillers): φ ∈ {identity, global
#   average pool, spatial attention, per-channel spatial softmax, random 50 % mask, multi-scale pool
#   {1, 2, 4}}; d ∈ {MSE, L1, 1 − cos, T²-KL, 1 − Pearson, Cauchy–Schwarz}; T ∈ {1, 4, 8};
#   λ ∈ {0.5, 1, 5, 20}.
# * **MCTS** (`kd_engine/search/sequential.py`): UCT with c = 1 (rewards min-max scaled to [0, 1]
#   inside UCT), expand one untried child, random rollout to a leaf, back the reward up the tree
#   path; a configuration is never evaluated twice.
# * **Reward (reconstruction):** R = −(L_val + β·(1 − CKA_linear(F_S, F_T))) with β = 1 (our
#   choice), after a short proxy run: L_val is the student's cross-entropy on the **validation**
#   split and CKA the linear CKA between the student's and the teacher's `layer2` features on that
#   split (`search.params.reward: val_loss_cka`). The test split is never read by a search.
# * **Teacher cache:** the teacher's `layer2` features and logits on the training split (and its
#   `layer2` features on the validation split, for the CKA term) are computed once per search and
#   stored as memory-mapped `.npy` files in the search directory; proxy runs read them and never
#   run the teacher.
#
# **Baselines** (planned): random search with the same number of evaluations (the baseline of the
# search comparison); for the final training: the student alone, vanilla KD (T = 4, λ = 1) and
# FitNet (feature MSE through the same adapter at `layer2`).
#
# **The miniature** (`configs/autokd_digits.yaml`): digits split 1200 / 300 / 297 (train / val /
# test), teacher CNN width 32 (30 epochs), student CNN width 8. Deviation from the planned design: proxy runs
# train on the whole training split (not 50 %), and at the full budget use **2 epochs and 30
# evaluations per search** (planned: 3 epochs, 40 evaluations), and the final training uses 15 epochs
# on the 3 search seeds (planned: 30 epochs, 5 seeds), to fit the CPU budget. The planned Spearman
# correlation of proxy and final scores is measured over 10 configurations of seed 0's searches,
# each trained once for the final number of epochs (section 5).
#
# **Claim to test:** MCTS reaches at least random search's reward at equal budget, and the
# winning distiller matches or beats vanilla KD. Selection uses the validation split only; the
# test accuracy of each search's chosen configuration is reported after the search.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, tiny searches (plumbing check); "full": 3 seeds, 30 evaluations
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs, searches and the teacher cache go here (None: a fresh temporary directory)

# %%
import copy
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from kd_engine.config import load_raw, validate
from kd_engine.experiment import apply_budget, format_summary, repo_file, setup, summarize
from kd_engine.reporting import claim as claim_of, describe
from kd_engine.search import run_search
from kd_engine.search.read import open_search, tree_visits
from workbench.figures import arm_comparison, level_visits, paired_differences, proxy_vs_final, search_bands

ctx = setup("p03_autokd", None, budget, seeds=3, work_dir=work_dir)
seeds, runs_dir, cache_dir = ctx.seeds, ctx.runs_dir, ctx.cache_dir
SMOKE = budget == "smoke"
EVALS = 4 if SMOKE else 30
PROXY_EPOCHS = 1 if SMOKE else 2
FINAL_EPOCHS = 2 if SMOKE else 15
TEACHER_EPOCHS = 2 if SMOKE else None  # None: the config's 30
WORKERS = 1 if SMOKE else 2  # searches / final runs at once (one torch thread each; teachers trained first)
raw = load_raw(repo_file("configs/autokd_digits.yaml"))
raw = apply_budget(raw, {**ctx.settings, "epochs": PROXY_EPOCHS, "teacher_epochs": TEACHER_EPOCHS})
raw.update(device="cpu", runs_dir=str(runs_dir), cache_dir=str(cache_dir))
print(f"{EVALS} evaluations per search, proxy epochs {PROXY_EPOCHS}, final epochs {FINAL_EPOCHS}, "
      f"teacher epochs {raw['teacher']['train']['epochs']}; the searches go to the same folder")

# %% [markdown]
# ## 1. The searches: MCTS and random search, same budget, same seeds
#
# Each seed fixes the data split (hence the teacher, trained on that split and cached) and the
# search's random generator. Every proxy run is an ordinary run of the store, tagged with its
# search id and trial number (the dashboard's **Searches** page shows them).

# %%
def search_config(strategy, seed):
    cfg = copy.deepcopy(raw)
    cfg["seed"] = seed
    cfg["search"].update(strategy=strategy, seed=seed, budget=EVALS, id=f"autokd-{strategy}-s{seed}")
    if strategy == "random":
        cfg["search"]["params"] = {k: v for k, v in cfg["search"]["params"].items() if k != "c"}
    return validate(cfg, f"{strategy} seed {seed}")


t_search = time.perf_counter()
# Each seed's teacher is trained (or loaded) once first, so two searches can then run at once
# (WORKERS spawned processes, one torch thread each) without racing to train the same teacher.
ctx.prepare_teachers({k: v for k, v in raw.items() if k != "search"})
keys = [(strategy, seed) for seed in seeds for strategy in ("mcts", "random")]
if WORKERS > 1:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=WORKERS, mp_context=context) as pool:
        roots = list(pool.map(run_search, [search_config(*key) for key in keys]))
else:
    roots = [run_search(search_config(*key)) for key in keys]
searches = {key: open_search(root) for key, root in zip(keys, roots)}
search_wall = time.perf_counter() - t_search
print(f"{len(keys)} searches of {EVALS} evaluations in {search_wall:.0f} s ({WORKERS} at a time)")
trials = pd.concat([s.trials().assign(strategy=k[0], seed=k[1]) for k, s in searches.items()], ignore_index=True)
trials[["strategy", "seed", "trial", "transform", "distance", "temperature", "weight", "reward", "val_acc"]].head(8)

# %% [markdown]
# ## 2. Best reward so far against evaluations
#
# Thin lines: seeds; thick: mean over seeds with a ± std band. The reward is
# −(validation loss + 1 − validation CKA) of the proxy run.

# %%
search_bands(trials, "strategy", "seed", title="best proxy reward −(L_val + 1 − CKA) so far: MCTS vs random "
             "(reconstructed space and reward)").show()
mcts_first = searches[("mcts", seeds[0])]
level_visits(tree_visits(mcts_first), title=f"MCTS visits per tree level, seed {seeds[0]} (reconstruction)").show()

# %% [markdown]
# ## 3. The search comparison by the reporting rule
#
# Per seed: the best reward each search found (validation), and the test accuracy of the proxy run
# of the configuration it chose (test is read only after the search). Baseline: random search.

# %%
rows = []
for (strategy, seed), search in searches.items():
    best = search.best()
    rows.append({"arm": strategy, "seed": seed, "best_reward": best["reward"],
                 "chosen_proxy_test_acc": best["test_acc"], "chosen": {k: best[k] for k in
                 ("transform", "distance", "temperature", "weight")}})
chosen = pd.DataFrame(rows)
display(chosen)
reward_summary = summarize(chosen, "best_reward", baseline="random")
proxy_test_summary = summarize(chosen, "chosen_proxy_test_acc", baseline="random")
display(Markdown("**Best reward found (−(L_val + 1 − CKA) of the proxy run)**"), format_summary(reward_summary))
display(Markdown("**Test accuracy of the chosen configuration's proxy run**"), format_summary(proxy_test_summary))

# %% [markdown]
# ## 4. Final training of the chosen distillers against the baselines
#
# Each seed's MCTS and random winners are trained for the final number of epochs on that seed's
# split, with the live teacher (no cache), next to the student alone, vanilla KD and FitNet.
# Baseline of this table: vanilla KD.

# %%
final_base = apply_budget({k: v for k, v in raw.items() if k != "search"}, {"epochs": FINAL_EPOCHS, "threads": 1})
final_base["record"] = {"instances": True, "eval_instances": True, "attention_maps": 0, "tensorboard": False}
final_base["name"] = "p03"
fixed = {"student": {"method": "scratch", "teacher": None, "distill.params": {}},
         "kd": {"method": "standard", "distill.params": {},
                "distill.terms": [{"loss": "kd", "weight": 1.0, "params": {"temperature": 4.0}}]},
         "fitnet": {"method": "standard", "distill.params": {},
                    "distill.terms": [{"loss": "fitnet", "weight": 1.0, "student_layer": "layer2",
                                       "teacher_layer": "layer2", "adapter": "conv1x1"}]}}
frames = []
t_final = time.perf_counter()
ctx.prepare_teachers(final_base)  # cached by the searches: parallel runs only load it
for seed in seeds:
    arms = dict(fixed)
    for strategy in ("mcts", "random"):
        pick = chosen[(chosen["arm"] == strategy) & (chosen["seed"] == seed)]["chosen"].iloc[0]
        arms[f"{strategy}_best"] = {"method": "autokd",
                                    "distill.params": {**raw["distill"]["params"], **pick}}
    frames.append(ctx.run_arms(arms, base=final_base, seeds=[seed], workers=WORKERS))
final_wall = time.perf_counter() - t_final
final = pd.concat(frames, ignore_index=True)
acc = "test/student_acc"
final_summary = summarize(final, acc, baseline="kd")
display(format_summary(final_summary))
order = ["student", "kd", "fitnet", "random_best", "mcts_best"]
arm_comparison(final, acc, order=order, title=f"final test accuracy ({FINAL_EPOCHS} epochs): mean ± std over "
               f"{len(seeds)} seed(s), points = seeds; searched arms use the reconstructed space").show()
paired_differences(final, "kd", acc, order=[a for a in order if a != "kd"],
                   title="paired test-accuracy difference vs vanilla KD (band: mean ± 2·std/√n)").show()

# %% [markdown]
# ## 5. Does the proxy rank distillers as full training does?
#
# The planned check of the reward itself: 10 configurations from seed 0's two searches, spread
# evenly over their proxy-reward ranks, are each trained once (seed 0) for the final number of
# epochs with the live teacher. Spearman's ρ between proxy reward and final test accuracy says
# whether a better proxy reward means a better distiller after full training (test accuracy is read
# only here, after every search has ended, and selects nothing).

# %%
from scipy.stats import spearmanr

CONFIG_KEYS = ["transform", "distance", "temperature", "weight"]
pool = (trials[trials["seed"] == seeds[0]].dropna(subset=["reward"])
        .drop_duplicates(subset=CONFIG_KEYS).sort_values("reward").reset_index(drop=True))
n_ranked = min(10, len(pool))
ranked = pool.iloc[sorted({int(round(i)) for i in np.linspace(0, len(pool) - 1, n_ranked)})].reset_index(drop=True)
ranked_arms = {f"cfg{i:02d}": {"method": "autokd",
                               "distill.params": {**raw["distill"]["params"],
                                                  **{k: getattr(pick[k], "item", lambda: pick[k])()
                                                     for k in CONFIG_KEYS}}}
               for i, pick in ranked.iterrows()}
t_rank = time.perf_counter()
ranked_final = ctx.run_arms(ranked_arms, base=final_base, seeds=[seeds[0]], workers=WORKERS)
rank_wall = time.perf_counter() - t_rank
ranked["final"] = ranked_final.set_index("arm").loc[list(ranked_arms), acc].to_numpy()
ranked["label"] = [", ".join(str(pick[k]) for k in CONFIG_KEYS) for _, pick in ranked.iterrows()]
rho, rho_p = spearmanr(ranked["reward"], ranked["final"]) if len(ranked) > 2 else (float("nan"), float("nan"))
display(ranked[["label", "reward", "val_cka", "final"]])
proxy_vs_final(ranked, "reward", "final", title=f"proxy reward vs final test accuracy ({FINAL_EPOCHS} epochs), "
               f"{len(ranked)} configurations, seed {seeds[0]}: Spearman ρ = {rho:.2f} (reconstruction)").show()
spearman_text = (f"Proxy reward vs final test accuracy over {len(ranked)} configurations (seed {seeds[0]}, "
                 f"{FINAL_EPOCHS} epochs each): Spearman ρ = {rho:.2f} (p = {rho_p:.3f}); "
                 + ("the proxy ranks distillers as full training does (p < 0.05)." if rho_p < 0.05 and rho > 0 else
                    "no rank agreement resolved at p < 0.05 with this many configurations."))
display(Markdown(spearman_text))

# %% [markdown]
# ## 6. Verdict in words

# %%
n = len(seeds)
lines = [describe(reward_summary, "mcts", "MCTS − random best reward (−(L_val + 1 − CKA))"),
         describe(proxy_test_summary, "mcts", "MCTS − random test accuracy of the chosen proxy run"),
         describe(final_summary, "mcts_best", "MCTS-chosen distiller − vanilla KD, final test accuracy"),
         describe(final_summary, "random_best", "random-chosen distiller − vanilla KD, final test accuracy"),
         describe(final_summary, "fitnet", "FitNet − vanilla KD, final test accuracy"),
         describe(final_summary, "student", "student alone − vanilla KD, final test accuracy")]
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    reward, final_claim = claim_of(reward_summary, "mcts"), claim_of(final_summary, "mcts_best")
    if reward != "not shown":
        part1 = ("MCTS finds a resolved **higher** best reward than random search at equal budget"
                 if reward == "holds" else "MCTS finds a resolved **lower** best reward than random search")
    else:
        part1 = "MCTS and random search reach best rewards **within noise** of each other at equal budget"
    if final_claim != "not shown":
        part2 = ("the MCTS-chosen distiller **beats** vanilla KD (resolved)" if final_claim == "holds"
                 else "the MCTS-chosen distiller is **worse** than vanilla KD (resolved)")
    else:
        part2 = "the MCTS-chosen distiller is **within noise** of vanilla KD in final test accuracy"
    claim = (f"Over {n} seeds: {part1}; {part2}. The paper's claim (MCTS ≥ random at equal budget; the winner "
             "matches or beats vanilla KD) is judged on these two lines; 'within noise' means the miniature "
             "cannot tell them apart, not that they are equal.")
picked = "; ".join(f"{a} s{s}: {c}" for a, s, c in zip(chosen["arm"], chosen["seed"], chosen["chosen"]))
verdict_text = " ".join([claim, "Paired differences: " + "; ".join(lines) + ".", spearman_text,
                         f"Chosen configurations: {picked}."])
display(Markdown(verdict_text))

# %% [markdown]
# ## 7. Save the results

# %%
ctx.save(results_path, [(reward_summary, "random"), (proxy_test_summary, "random"), (final_summary, "kd")],
         title="Auto-KD (paper 3, reconstruction): MCTS vs random search over distillers on digits "
               "(CNN w32 → w8)",
         notes=verdict_text.replace("**", "") + f" Searches took {search_wall:.0f} s, final training "
               f"{final_wall:.0f} s, the rank check {rank_wall:.0f} s.")
wall = ctx.wall_s
print(f"budget {budget}: {len(seeds)} seed(s), {len(trials)} proxy runs + {len(final) + len(ranked_final)} final "
      f"runs in {wall:.0f} s")
