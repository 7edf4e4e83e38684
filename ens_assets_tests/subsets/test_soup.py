import copy

import pytest
import torch

from ens_assets.subsets.in_memory_training import (
    create_seeded_model,
    mean_log_loss,
    predict_logits,
)
from ens_assets.subsets.standard_loop import default_train_fn
from ens_assets.subsets.soup import IncompatibleStatesError, average_state_dicts, greedy_soup
from ens_assets_tests.subsets.colour_images import BACKBONE


@pytest.fixture(scope="module")
def trained_base(train_val):
    images, labels, _, _ = train_val
    return default_train_fn(3, images, labels)(create_seeded_model(BACKBONE, 3, seed=0), images, labels, 2, 0)


@pytest.mark.slow
def test_averaging_identical_copies_returns_the_same_model(trained_base, train_val):
    _, _, val_images, _ = train_val
    state = trained_base.state_dict()
    averaged = average_state_dicts([copy.deepcopy(state) for _ in range(3)])
    assert averaged.keys() == state.keys()
    for key, tensor in state.items():
        assert averaged[key].dtype == tensor.dtype
        assert torch.equal(averaged[key], tensor), key
    rebuilt = create_seeded_model(BACKBONE, 3, seed=99)
    rebuilt.load_state_dict(averaged)
    torch.testing.assert_close(predict_logits(rebuilt, val_images), predict_logits(trained_base, val_images),
                               rtol=0, atol=0)


def test_average_is_the_mean_of_floats_and_keeps_the_first_integer_buffers():
    states = [{"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(5)},
              {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9)}]
    averaged = average_state_dicts(states)
    torch.testing.assert_close(averaged["w"], torch.tensor([2.0, 4.0]))
    assert averaged["bn.num_batches_tracked"].item() == 5
    assert averaged["bn.num_batches_tracked"].dtype == torch.int64


def test_mismatched_state_dicts_give_a_clear_error():
    three_classes = create_seeded_model(BACKBONE, 3, seed=0).state_dict()
    four_classes = create_seeded_model(BACKBONE, 4, seed=0).state_dict()
    with pytest.raises(IncompatibleStatesError, match=r"state dict 1: 'fc.weight' is torch.float32 \(4, 96\).*shared base"):
        average_state_dicts([three_classes, four_classes])
    fewer_keys = {k: v for k, v in three_classes.items() if k != "fc.bias"}
    with pytest.raises(IncompatibleStatesError, match=r"missing \['fc.bias'\]"):
        greedy_soup([three_classes, fewer_keys], heldout_loss_fn=lambda s: 0.0)
    with pytest.raises(IncompatibleStatesError, match="at least one"):
        average_state_dicts([])


def test_greedy_soup_never_accepts_a_copy_that_raises_heldout_loss():
    # Held-out loss = distance of w to a target; averaging with the far-off copy 3 would raise it.
    target = torch.tensor([1.0, 1.0])
    states = [{"w": torch.tensor([1.2, 0.8])}, {"w": torch.tensor([0.8, 1.2])}, {"w": torch.tensor([1.3, 1.1])},
              {"w": torch.tensor([9.0, -5.0])}]
    calls = []

    def heldout_loss(state):
        loss = float((state["w"] - target).norm())
        calls.append(loss)
        return loss

    soup, accepted = greedy_soup(states, heldout_loss)
    assert 3 not in accepted
    assert accepted[0] in (0, 1)  # the best single copy starts the soup
    assert set(accepted) == {0, 1}  # [1.2,0.8]+[0.8,1.2] averages onto the target; [1.3,1.1] would not help
    torch.testing.assert_close(soup["w"], target)


@pytest.mark.slow
def test_greedy_soup_on_real_copies_rejects_a_bad_copy(trained_base, train_val):
    images, labels, val_images, val_labels = train_val
    copies = []
    for seed in (1, 2):
        trained = default_train_fn(3, images, labels)(copy.deepcopy(trained_base), images, labels, 1, seed)
        copies.append(trained.state_dict())
    # A copy fine-tuned on flipped labels is the planted bad one.
    flipped = (labels + 1) % 3
    bad = default_train_fn(3, images, flipped)(copy.deepcopy(trained_base), images, flipped, 3, 3)
    copies.append(bad.state_dict())
    scratch = create_seeded_model(BACKBONE, 3, seed=0)

    def heldout_loss(state):
        scratch.load_state_dict(state)
        return mean_log_loss(scratch, val_images, val_labels)

    own = [heldout_loss(s) for s in copies]
    assert own[2] > max(own[:2])
    soup, accepted = greedy_soup(copies, heldout_loss, own_losses=own)
    assert 2 not in accepted
    assert heldout_loss(soup) <= min(own) + 1e-6
    assert heldout_loss(average_state_dicts(copies)) > heldout_loss(soup)  # uniform would have taken it in
