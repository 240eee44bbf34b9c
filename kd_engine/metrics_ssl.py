"""Representation-learning diagnostics: collapse indicators and kNN / linear-probe accuracy on
frozen embeddings (AdaSim, paper 14; scikit-learn does the classifiers)."""
from __future__ import annotations

import numpy as np
import torch


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std across the batch of L2-normalised embeddings: about
    1/√D for well-spread embeddings, 0 when every input maps to the same point."""
    zn = torch.nn.functional.normalize(z.float(), dim=1)
    return float(zn.std(0).mean()) if len(z) > 1 else 0.0


def mean_entropy(probs: torch.Tensor) -> float:
    """Entropy (nats) of the batch-mean distribution: log K when the mean is uniform (collapse to
    uniform outputs or a healthy spread), 0 when every input picks the same dimension."""
    p = probs.float().mean(0).clamp_min(1e-12)
    return float(-(p * p.log()).sum())


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred batch (Roy & Vetterli,
    2007): 1 for a rank-one batch, D for an isotropic one."""
    s = torch.linalg.svdvals(z.float() - z.float().mean(0, keepdim=True))
    if float(s.sum()) <= 0:
        return 0.0
    p = (s / s.sum()).clamp_min(1e-12)
    return float(torch.exp(-(p * p.log()).sum()))


def knn_accuracy(train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray, test_y: np.ndarray,
                 k: int = 20) -> float:
    """Accuracy of a cosine k-nearest-neighbour vote fitted on the training embeddings."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine")
    clf.fit(train_z, train_y)
    return float((clf.predict(test_z) == test_y).mean())


def linear_probe_accuracy(train_z: np.ndarray, train_y: np.ndarray, test_z: np.ndarray,
                          test_y: np.ndarray) -> float:
    """Accuracy of a logistic-regression probe on standardised frozen embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train_z, train_y)
    return float((clf.predict(test_z) == test_y).mean())


def run_embeddings(run_dir, pixels: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frozen embeddings (at the student's ``embedding_layer``, clean images, eval mode) of a
    finished run's final student, per split: {"train"|"val"|"test": (Z, y)}. ``pixels``: the
    flattened images of the same splits instead (the no-learning reference)."""
    from pathlib import Path

    from kd_engine.config import load_raw, validate
    from kd_engine.data import build_data
    from kd_engine.models import build_model, feature_taps
    from kd_engine.trainers.checkpoint import load_weights

    run_dir = Path(run_dir)
    cfg = validate(load_raw(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    data = build_data(cfg.data, cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed)
    model = build_model(cfg.student, data.input_shape, data.num_classes, field="student")
    load_weights(model, run_dir / "checkpoints" / "student.safetensors")
    model.eval()
    layer = model.embedding_layer
    out = {}
    for split in ("train", "val", "test"):
        dataset = getattr(data, split)
        if not len(dataset):
            continue
        if pixels:
            out[split] = (dataset.x.flatten(1).numpy(), dataset.y.numpy())
            continue
        with torch.no_grad(), feature_taps(model, [layer]) as feats:
            model(dataset.x)
        out[split] = (feats[layer].flatten(1).numpy(), dataset.y.numpy())
    return out


def representation_metrics(run_dir, k: int = 20, pixels: bool = False) -> dict[str, float]:
    """kNN (k = 20, cosine) and linear-probe accuracy on frozen embeddings, fitted on the train
    split, for val and test; plus the collapse indicators of the test embeddings."""
    emb = run_embeddings(run_dir, pixels)
    z_train, y_train = emb["train"]
    metrics = {}
    for split in ("val", "test"):
        if split in emb:
            z, y = emb[split]
            metrics[f"{split}/knn_acc"] = knn_accuracy(z_train, y_train, z, y, k)
            metrics[f"{split}/linear_probe_acc"] = linear_probe_accuracy(z_train, y_train, z, y)
    z_test = torch.from_numpy(emb["test"][0])
    metrics["test/embedding_std"] = embedding_std(z_test)
    metrics["test/effective_rank"] = effective_rank(z_test)
    return metrics
