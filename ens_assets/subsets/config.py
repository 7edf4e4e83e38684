"""Settings of a subset-ensemble member; torch-free so the plan can validate them at load time."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GradScope = Literal["auto", "last_layer", "full"]


class SubsetEnsembleConfig(BaseModel):
    """Settings of one subset-ensemble member (a `strategy: subset` entry in the plan)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(0.3, gt=0.0, le=1.0)  # k: share of the training images in every subset
    copies: int = Field(3, ge=1)  # n: copies per phase, one per difficulty stratum
    phases: int = Field(1, ge=1)  # base -> copies -> merge repeats
    total_epochs: int = Field(8, ge=2)  # all epochs of all phases, base and copies together
    merge: Literal["uniform", "greedy"] = "greedy"
    score: Literal["el2n", "grand"] = "el2n"  # difficulty score that orders the strata
    score_seeds: tuple[int, ...] = (0, 1)
    score_epochs: int = Field(1, ge=0)  # brief training before scoring ("early in training")
    grad_scope: GradScope = "auto"
    class_balanced: bool = True  # subsets keep every class in proportion (strata cut per class)
    batch_size: int = Field(64, ge=2)
    # Share of the training split held out to choose soup ingredients and the base-vs-soup fallback on
    # (and the copies' best epochs): never the OOF fold the member is scored on.
    selection_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    # Training crops whose forward passes recompute BatchNorm statistics of an averaged model (update_bn).
    bn_images: int = Field(1024, ge=2)

    @model_validator(mode="after")
    def _budget_covers_every_copy(self) -> "SubsetEnsembleConfig":
        smallest_phase = self.total_epochs // self.phases
        if smallest_phase < 2 * self.copies:
            raise ValueError(
                f"total_epochs={self.total_epochs} over phases={self.phases} leaves {smallest_phase} epochs in a "
                f"phase; the base takes half and each of the {self.copies} copies needs >= 1 epoch of the other "
                f"half, so give total_epochs >= {2 * self.copies * self.phases} or fewer copies/phases")
        return self


def epoch_plan(cfg: SubsetEnsembleConfig) -> list[tuple[int, int]]:
    """(base_epochs, epochs_per_copy) for each phase; the sums never exceed cfg.total_epochs.

    Phases split the budget evenly (earlier phases take the remainder); in a phase the copies share
    half of it equally and the base gets the rest.
    """
    plan = []
    for phase in range(cfg.phases):
        budget = cfg.total_epochs // cfg.phases + (1 if phase < cfg.total_epochs % cfg.phases else 0)
        per_copy = (budget // 2) // cfg.copies
        plan.append((budget - per_copy * cfg.copies, per_copy))
    return plan
