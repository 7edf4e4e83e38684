"""Per-example difficulty scores from briefly trained models: EL2N and GraNd (Paul et al., 2021).

For each seed a randomly initialised model is trained for a few epochs (scores are taken early in
training, where they separate easy from hard/mislabelled examples best), then every training example
is scored:

- EL2N  = || softmax(logits) - onehot(label) ||_2
- GraNd = || d loss / d theta ||_2, the per-example gradient norm of the cross-entropy loss.

Both are averaged over seeds ("expected" norms). Per-example gradients use torch.func
(functional_call + vmap(grad)) instead of one backward pass per example (measured on one CPU thread:
0.9-1.5x the loop for full scope on tiny models; the last-layer scope is 14-18x faster).

GraNd scope: "full" differentiates through every parameter (exact); "last_layer" only through the
final classifier (the "last layer" approximation: that gradient is (p - y) x [features, 1], i.e. EL2N
weighted by the feature norm). The approximation costs a fraction of the full one and still puts
mislabelled examples on top (tested), but its ranking of the remaining examples can differ from the
full norm (bench.bench_subset_grand prints the rank correlation). "auto" picks full for models up to
FULL_GRAD_MAX_PARAMS parameters and last_layer above.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ens_assets.plan import GradScope
from ens_assets.subsets.in_memory_training import (
    TrainFn,
    as_image_tensor,
    as_label_tensor,
    batch_indices,
    create_seeded_model,
    to_model_input,
)
from ens_assets.subsets.standard_loop import default_train_fn

SCORE_COLUMNS = ("el2n", "grand")
# Above this many parameters full per-example gradients cost too much memory/time; use the last layer.
FULL_GRAD_MAX_PARAMS = 1_000_000
# Per-example gradients held at once by vmap in "full" scope (memory = this x parameter count).
_FULL_GRAD_CHUNK = 16


def resolve_grad_scope(model: torch.nn.Module, scope: GradScope) -> Literal["last_layer", "full"]:
    if scope not in ("auto", "last_layer", "full"):
        raise ValueError(f"grad_scope '{scope}' is not one of 'auto', 'last_layer', 'full'")
    if scope != "auto":
        return scope
    return "full" if sum(p.numel() for p in model.parameters()) <= FULL_GRAD_MAX_PARAMS else "last_layer"


def difficulty_scores(
    backbone: str,
    num_classes: int,
    images_u8: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    seeds: tuple[int, ...] = (0, 1),
    epochs: int = 1,
    batch_size: int = 64,
    train_fn: TrainFn | None = None,
    grad_scope: GradScope = "auto",
    device: str | torch.device = "cpu",
) -> pl.DataFrame:
    """EL2N and GraNd per training example, averaged over `seeds` briefly trained models.

    Returns one row per image in input order: `index, el2n, grand, el2n_seed<s>, grand_seed<s>...`.
    """
    images = as_image_tensor(images_u8)
    targets = as_label_tensor(labels, len(images), num_classes)
    if not seeds:
        raise ValueError("seeds: give at least one seed; scores are averaged over the seeds' models")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} repeat; repeated seeds train identical models")
    # The default keeps each seed's lowest-loss epoch on the scored images themselves (no held-out set here).
    train = train_fn or default_train_fn(num_classes, images, targets, batch_size=batch_size)
    columns: dict[str, np.ndarray] = {"index": np.arange(len(images), dtype=np.int64)}
    for seed in seeds:
        model = create_seeded_model(backbone, num_classes, seed, device)
        model = train(model, images, targets, epochs, seed)
        el2n, grand_norm = score_model(model, images, targets, batch_size=batch_size, grad_scope=grad_scope)
        columns[f"el2n_seed{seed}"] = el2n
        columns[f"grand_seed{seed}"] = grand_norm
    for name in SCORE_COLUMNS:
        columns[name] = np.mean([columns[f"{name}_seed{s}"] for s in seeds], axis=0)
    order = ["index", *SCORE_COLUMNS, *[f"{n}_seed{s}" for s in seeds for n in SCORE_COLUMNS]]
    return pl.DataFrame({k: columns[k] for k in order})


def score_model(
    model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
    batch_size: int = 64, grad_scope: GradScope = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(EL2N, GraNd) of one trained model for every example, in eval mode (BatchNorm running stats)."""
    images = as_image_tensor(images_u8)
    targets = as_label_tensor(labels, len(images))
    scope = resolve_grad_scope(model, grad_scope)
    model.eval()
    el2n_parts, grand_parts = [], []
    grad_norms = _full_grad_norms if scope == "full" else _last_layer_grad_norms
    for i, part in enumerate(batch_indices(len(images), batch_size)):
        x = to_model_input(model, images[part])
        y = targets[part].to(x.device)
        logits, norms = grad_norms(model, x, y, check_head=(i == 0))
        onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        el2n_parts.append((logits.softmax(dim=1) - onehot).norm(dim=1).cpu())
        grand_parts.append(norms.cpu())
    if not el2n_parts:
        return np.zeros(0), np.zeros(0)
    return torch.cat(el2n_parts).double().numpy(), torch.cat(grand_parts).double().numpy()


def _per_example_norm(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(dim=1) for g in grads.values()))


def _full_grad_norms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, check_head: bool):
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=_FULL_GRAD_CHUNK)(params, x, y)
    with torch.no_grad():
        logits = model(x).float()
    return logits, _per_example_norm(grads)


def _last_layer_grad_norms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, check_head: bool):
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head") and hasattr(model, "get_classifier")):
        raise ValueError(f"{type(model).__name__} has no timm forward_features/forward_head/get_classifier; "
                         "use grad_scope='full' for non-timm models")
    head = model.get_classifier()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = head(features).float()
        # The approximation is only valid when the classifier is the very last op; check once per model.
        if check_head and not torch.allclose(logits, model(x).float(), rtol=1e-3, atol=1e-4):
            raise ValueError(f"{type(model).__name__}: classifier(pre-logit features) does not reproduce the "
                             "model's logits, so the last-layer GraNd approximation does not apply; "
                             "use grad_scope='full'")
    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss_one(p, fi, yi):
        return F.cross_entropy(functional_call(head, p, (fi.unsqueeze(0),)), yi.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, features, y)
    return logits, _per_example_norm(grads)


def score_distribution_png(scores_df: pl.DataFrame, class_names: list[str] | tuple[str, ...],
                           labels: np.ndarray | torch.Tensor) -> bytes:
    """Box plots of EL2N and GraNd per class (PNG bytes), to spot classes dominated by hard examples."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # explicit Agg: no pyplot global state
    from matplotlib.figure import Figure

    missing = [c for c in ("index", *SCORE_COLUMNS) if c not in scores_df.columns]
    if missing:
        raise ValueError(f"scores_df lacks columns {missing}; pass the frame difficulty_scores returned")
    indices = scores_df["index"].to_numpy()
    label_array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if len(indices) and len(label_array) <= int(indices.max()):
        raise ValueError(f"labels has {len(label_array)} entries but scores_df refers to index {int(indices.max())}; "
                         "pass the labels of the same training images that were scored")
    row_labels = as_label_tensor(label_array[indices], len(indices), len(class_names)).numpy()
    present = [c for c in range(len(class_names)) if np.any(row_labels == c)]
    figure = Figure(figsize=(max(6.0, 1.1 * len(present) + 2), 6.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 1, sharex=True)
    for ax, column in zip(axes, SCORE_COLUMNS):
        values = scores_df[column].to_numpy()
        ax.boxplot([values[row_labels == c] for c in present], showfliers=True)
        ax.set_ylabel(column.upper())
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(1, len(present) + 1),
                        [f"{class_names[c]}\n(n={int(np.sum(row_labels == c))})" for c in present],
                        rotation=30, ha="right")
    axes[0].set_title("Per-example difficulty by class (higher = harder or mislabelled)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
