"""Methods: the catalogue of AID and the 28 ICCV 2023 distillation papers the workbench reproduces.

A status is never written down: it is computed from what exists — a registered method, weighting
or loss (implemented), a notebook under notebooks/ (notebook), rows in docs/results.md in that
notebook's section or naming the method (reproduced) — so the page cannot claim work that is not
there.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pandas as pd
import streamlit as st

from kd_engine.errors import ConfigError
from workbench import components as ui
from workbench import launcher

ROOT = launcher.REPO
# (paper number in the ICCV 2023 list, short name, core mechanism in one line).
CATALOGUE = [
    ("AID", "AID", "per-instance distillation weights from the teacher's own task loss"),
    (1, "SSD-Det", "self-regress jittered proposals onto noisy box; IoU-weighted MIL merge"),
    (2, "WCBC-IOD", "distil class-prototype distance matrices and instance-to-prototype offsets"),
    (3, "Auto-KD", "tree search over distiller choices; proxy-training reward"),
    (4, "ZeroSeg", "multi-crop teacher embeddings distilled into grouped segment tokens"),
    (5, "OTD", "steer unreliable gradients with low-rank subspace of reliable gradients"),
    (6, "TinyCLIP", "soft CE on image–text affinity matrices, plus inherited teacher weights"),
    (7, "RDD", "high-disparity region pairs; balanced masks; feature + logit KD; IB term"),
    (8, "SDD", "score distillation into a feed-forward editor at entropy-selected timestep"),
    (9, "SAM (audio)", "per-location learnable queries attend over audio tokens; match teacher maps"),
    (10, "Cr-KD", "on novel samples, match frozen model's known-class distribution; learnable gate"),
    (11, "UP-VL", "per-point 3-D features distilled from 2-D vision-language feature maps"),
    (12, "KD³", "teacher+student sample selection, weighted alignment, mix-contrast"),
    (13, "CS-MTL-KD", "one multi-task teacher; CS-divergence loss; intra/inter-task matching"),
    (14, "AdaSim", "DINO; a kNN neighbour as partner only when the votes are reliable"),
    (15, "FerKD", "cached crop soft labels; low-confidence crops relabelled with smoothed GT"),
    (16, "MDCS", "logit-adjusted diverse experts; weak→strong KL on confidently correct samples"),
    (17, "GiftNet (harmonization)", "foreground–background feature relations distilled to composites"),
    (18, "MemKD", "student with key–value normality memory; cosine feature-KD anomaly score"),
    (19, "BCKD", "per-class binary KD weighted by discrepancy; IoU-based box KD"),
    (20, "MM-Ego-KD", "RGB student from softmin-loss-weighted ensemble of modality teachers"),
    (21, "WAD", "contrastive-similarity pseudo-labels weighted by top-2 margin, iterated"),
    (22, "DOT", "separate momentum buffers: larger for KD gradient, smaller for task"),
    (23, "BOSS", "BO trials self-distil from top-k earlier trial checkpoints"),
    (24, "UniKD", "frozen query extractor pretrained on teacher outputs; student must satisfy it"),
    (25, "L2D", "per-label binary KL plus label-embedding distance-structure distillation"),
    (26, "DistillBEV", "fg/bg/scale/attention-weighted BEV feature imitation, LiDAR → camera"),
    (27, "ORC", "teacher/student groups, online promotion, teachers refined on error samples"),
    (28, "PointDC", "masked normalised MSE to back-projected 2-D features; super-voxel clustering"),
]


# Engine and notebook names that spell a catalogued method differently from its short name.
ALIASES = {"MM-Ego-KD": {"mmego"}, "WCBC-IOD": {"wcbc"}}


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def keys_of(name: str) -> set[str]:
    """Normalised spellings of a short name: 'Cr-KD' -> {'crkd'}, 'SAM (audio)' -> {'samaudio', 'sam'}."""
    full = re.sub(r"[^a-z0-9]", "", _fold(name))
    head = re.sub(r"[^a-z0-9]", "", _fold(name.split("(")[0]))
    return {k for k in (full, head) if k}


def mentions(text: str, keys: set[str]) -> bool:
    """True when consecutive word tokens of `text` spell one of the keys ('01_cr_kd' has 'crkd');
    whole tokens only, so 'ssd_det' does not mention 'sdd'."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", _fold(text)) if t]
    for i in range(len(tokens)):
        joined = ""
        for token in tokens[i:i + 4]:
            joined += token
            if joined in keys:
                return True
    return False


def registered_names() -> list[str]:
    names: list[str] = []
    try:
        from kd_engine.losses.terms import LOSSES
        from kd_engine.methods import METHODS
        from kd_engine.weighting import WEIGHTINGS
        for registry in (METHODS, WEIGHTINGS, LOSSES):
            names += registry.names()
    except ImportError:
        pass
    return names


def _table_row(line: str) -> bool:
    return line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line)


def result_rows(root: Path) -> list[str]:
    path = root / "docs" / "results.md"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(errors="replace").splitlines() if _table_row(line.strip())]


def notebook_sections(root: Path) -> dict[str, list[str]]:
    """Table rows of docs/results.md per notebook: each notebook's section names it
    ("Notebook `notebooks/<stem>.ipynb`"), and the rows after that line until the next section
    are its results (whatever its arms are called)."""
    path = root / "docs" / "results.md"
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        line = line.strip()
        if line.startswith("## "):
            current = None
        found = re.match(r"Notebook `notebooks/([^`/]+)\.ipynb`", line)
        if found:
            current = sections.setdefault(found.group(1), [])
        elif current is not None and _table_row(line) and not line.startswith("| arm |"):
            current.append(line)
    return sections


def catalogue(root: Path = ROOT, registered: list[str] | None = None) -> pd.DataFrame:
    """One row per catalogued method with its computed status, notebook, result and demo config."""
    registered = registered_names() if registered is None else registered
    notebooks = sorted((root / "notebooks").glob("*.ipynb")) if (root / "notebooks").is_dir() else []
    configs = sorted((root / "configs").glob("*.yaml")) if (root / "configs").is_dir() else []
    results, sections = result_rows(root), notebook_sections(root)
    rows = []
    for number, name, mechanism in CATALOGUE:
        keys = keys_of(name) | ALIASES.get(name, set())
        implemented = [r for r in registered if mentions(r, keys)]
        notebook = next((p for p in notebooks if mentions(p.stem, keys)), None)
        measured = sections.get(notebook.stem, []) if notebook else []
        measured = measured or [r for r in results if any(mentions(cell, keys) for cell in r.strip("|").split("|")[:2])]
        config = next((p for p in configs if mentions(p.stem, keys)), None)
        status = "reproduced" if measured else "notebook" if notebook else "implemented" if implemented else "planned"
        rows.append({"#": str(number), "method": name, "status": status,
                     "notebook": str(notebook.relative_to(root)) if notebook else "",
                     "result (docs/results.md)": " / ".join(r.strip("| ") for r in measured)[:300],
                     "demo config": str(config.relative_to(root)) if config else "",
                     "registered as": ", ".join(implemented), "mechanism": mechanism})
    return pd.DataFrame(rows)


def main() -> None:
    st.title("Methods")
    st.caption("AID and the 28 distillation papers of the ICCV 2023 list. Status is computed "
               "from the code: registered → implemented, a notebook → notebook, a row in "
               "docs/results.md → reproduced.")
    table = catalogue()
    counts = table["status"].value_counts()
    cols = st.columns(4)
    for col, status in zip(cols, ("reproduced", "notebook", "implemented", "planned")):
        col.metric(status, int(counts.get(status, 0)))
    chosen = st.multiselect("Status", ["reproduced", "notebook", "implemented", "planned"], key="methods_status")
    shown = table[table["status"].isin(chosen)] if chosen else table
    st.dataframe(shown, hide_index=True, key="methods_table", height=38 + 35 * len(shown))
    demos = table[table["demo config"] != ""]
    st.subheader("Launch a method's demo")
    if demos.empty:
        st.info("No method has a demo config under configs/ yet.")
        return
    cols = st.columns([3, 1])
    method = cols[0].selectbox("Method", demos["method"].tolist(), key="methods_demo")
    config = demos[demos["method"] == method]["demo config"].iloc[0]
    if cols[1].button("Launch demo", icon=":material/rocket_launch:", key="methods_launch"):
        try:
            record = launcher.launch((ROOT / config).read_text(), source=config, base=ui.runs_dir())
        except ConfigError as exc:
            st.error(launcher.cli_error(exc))
            return
        st.session_state["kdw_launched"] = st.session_state[ui.RUN_KEY] = record["run_id"]
        st.success(f"Launched {config} as run **{record['run_id']}**; watch it on Curves.")


if __name__ == "__main__":
    ui.guard(main)
