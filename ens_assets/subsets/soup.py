"""Parameter averaging ("model soups", Wortsman et al., 2022) of copies that share one initialization.

Averaging weights is only meaningful for models fine-tuned from the same starting point (here: the
subset-ensemble base); independently initialised networks sit in different loss basins and their
average is garbage. We cannot prove a shared start from the weights alone, but copies of one base
always have identical keys, shapes and dtypes, so anything else is rejected with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

StateDict = Mapping[str, torch.Tensor]


class IncompatibleStatesError(ValueError):
    """State dicts that cannot be averaged: different architectures or heads."""


def check_compatible(states: Sequence[StateDict]) -> None:
    """Raise IncompatibleStatesError unless all state dicts have the same keys, shapes and dtypes."""
    if not states:
        raise IncompatibleStatesError("no state dicts to average; pass at least one")
    fix = ("parameter averaging needs copies trained from one shared base model (same backbone, same "
           "num_classes); train every copy from a copy of the base's state_dict")
    reference = states[0]
    for i, state in enumerate(states[1:], start=1):
        missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
        if missing or extra:
            raise IncompatibleStatesError(
                f"state dict {i} differs from state dict 0 in keys (missing {missing[:5]}, unexpected "
                f"{extra[:5]}{' ...' if len(missing) + len(extra) > 10 else ''}); {fix}")
        for key, tensor in reference.items():
            other = state[key]
            if other.shape != tensor.shape or other.dtype != tensor.dtype:
                raise IncompatibleStatesError(
                    f"state dict {i}: '{key}' is {other.dtype} {tuple(other.shape)} but {tensor.dtype} "
                    f"{tuple(tensor.shape)} in state dict 0; {fix}")


def average_state_dicts(states: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """Uniform average of floating-point tensors; integer/bool buffers (BatchNorm's num_batches_tracked)
    are taken from the first state dict. Sums run in float64 so averaging identical copies is exact."""
    check_compatible(states)
    averaged: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if first.is_floating_point() or first.is_complex():
            total = torch.stack([s[key].detach().to(torch.float64 if first.is_floating_point() else torch.complex128)
                                 for s in states]).sum(dim=0)
            averaged[key] = (total / len(states)).to(first.dtype)
        else:
            averaged[key] = first.detach().clone()
    return averaged


def greedy_soup(
    states: Sequence[StateDict], heldout_loss_fn: Callable[[StateDict], float], *,
    own_losses: Sequence[float] | None = None,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Greedy soup: add candidates best-first, keeping one only if the soup's held-out loss drops.

    `heldout_loss_fn(state)` returns the held-out loss of a model with that state. `own_losses` (the
    candidates' own held-out losses, if already computed) saves one evaluation per candidate. Returns
    the averaged state of the accepted candidates and their indices in acceptance order; the first
    accepted is always the best single candidate, so the soup is never worse than it on held-out data.
    """
    check_compatible(states)
    if own_losses is None:
        own_losses = [float(heldout_loss_fn(s)) for s in states]
    if len(own_losses) != len(states):
        raise ValueError(f"own_losses has {len(own_losses)} entries for {len(states)} states")
    bad = [i for i, loss in enumerate(own_losses) if loss != loss]
    if bad:
        raise ValueError(f"held-out loss of candidate {bad[0]} is NaN; that copy diverged, drop it or lower lr")
    ranked = sorted(range(len(states)), key=lambda i: (own_losses[i], i))
    accepted = [ranked[0]]
    soup = {k: v.detach().clone() for k, v in states[ranked[0]].items()}
    soup_loss = float(own_losses[ranked[0]])
    for candidate in ranked[1:]:
        trial = average_state_dicts([states[i] for i in (*accepted, candidate)])
        trial_loss = float(heldout_loss_fn(trial))
        if trial_loss < soup_loss:
            accepted.append(candidate)
            soup, soup_loss = trial, trial_loss
    return soup, accepted


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, images_u8: np.ndarray | torch.Tensor, batch_size: int) -> bool:
    """Re-estimate BatchNorm running statistics of `model` on training crops (torch's swa_utils.update_bn).

    The average of several copies' running means/variances is not the statistics of the averaged
    weights' activations; one pass over training images gives the right ones. Returns whether the
    model had BatchNorm layers to update; leaves the model in eval mode.
    """
    from torch.optim.swa_utils import update_bn

    from ens_assets.subsets.in_memory_training import as_image_tensor, batch_indices, to_model_input

    if not has_batchnorm(model):
        return False
    images = as_image_tensor(images_u8, "bn_images")
    # A generator: update_bn reads each normalized batch once, so the whole set is never held as floats.
    batches = (to_model_input(model, images[s]) for s in batch_indices(len(images), batch_size))
    update_bn(batches, model)
    model.eval()
    return True
