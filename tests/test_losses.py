import math

import pytest
import torch

from distilldift.training.losses import distillation_loss, similarity_logits


def unit(*vectors):
    """(1, C, 1, n) feature map from n vectors (normalised)."""
    t = torch.tensor(vectors, dtype=torch.float32).t()[None, :, None, :]
    return torch.nn.functional.normalize(t, dim=1)


def test_hand_computed_case():
    # image 1: one location; image 2: two locations at cosine 1 and 0 from it
    s1, s2 = unit([1.0, 0.0]), unit([1.0, 0.0], [0.0, 1.0])
    t1, t2 = unit([1.0, 0.0]), unit([0.0, 1.0], [1.0, 0.0])  # the teacher prefers the *second* location
    tau = 0.5
    # student logits [2, 0] -> log p = [2 - log(e^2 + 1), -log(e^2 + 1)]; teacher p = softmax([0, 2])
    p_t = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    log_p_s = torch.log_softmax(torch.tensor([2.0, 0.0]), 0)
    expected = -(p_t * log_p_s).sum()
    assert distillation_loss(s1, s2, t1, t2, temperature=tau).item() == pytest.approx(expected.item(), rel=1e-6)
    # by hand: -(p0 (2 - L) - p1 L) = L - 2 p0 = L - 2 + 2 p1 with L = log(e^2 + 1)
    assert expected.item() == pytest.approx(math.log(math.exp(2) + 1) - 2 + 2 * p_t[1].item(), rel=1e-6)


def test_direction_and_temperature():
    torch.manual_seed(0)
    s1, s2, t1, t2 = (torch.randn(2, 16, 3, 4) for _ in range(4))
    loss = distillation_loss(s1, s2, t1, t2, temperature=0.1)
    # cross-entropy of the student against the teacher: teacher = target distribution
    pt = torch.softmax(similarity_logits(t1, t2, 0.1), -1)
    ps = torch.softmax(similarity_logits(s1, s2, 0.1), -1)
    assert loss.item() == pytest.approx(-(pt * ps.log()).sum(-1).mean().item(), rel=1e-5)
    swapped = distillation_loss(t1, t2, s1, s2, temperature=0.1)
    assert abs(loss.item() - swapped.item()) > 1e-3  # not symmetric: the direction matters
    # the minimum over students is reached by the teacher itself (cross-entropy >= entropy)
    assert distillation_loss(t1, t2, t1, t2, temperature=0.1) < loss
    # a lower temperature sharpens the target: with identical features the loss (entropy) drops
    assert distillation_loss(t1, t2, t1, t2, temperature=0.01) < distillation_loss(t1, t2, t1, t2, temperature=0.1)


def test_gradients_flow_only_to_the_student():
    s1 = torch.randn(1, 8, 2, 2, requires_grad=True)
    t1 = torch.randn(1, 8, 2, 2, requires_grad=True)
    distillation_loss(s1, s1, t1, t1).backward()
    assert s1.grad.abs().sum() > 0  # the student learns
    assert t1.grad is None  # the teacher is only the target, even when its tensors would take gradients
    with pytest.raises(ValueError, match="must agree"):
        distillation_loss(torch.randn(1, 8, 2, 2), s1, torch.randn(1, 8, 3, 3), t1)


def test_nn_agreement_counts_cells_within_the_tolerance():
    """Image 2 is image 1 shifted one cell right; a student matching one cell further right agrees only at tol 1."""
    from train_metrics import nn_agreement

    codes = torch.eye(12).view(12, 3, 4)  # 3 x 4 grid, one-hot code per cell: the teacher's match is exact
    t1 = codes[:, :, :3].unsqueeze(0)  # cells x = 0..2
    t2 = codes.unsqueeze(0)  # cells x = 0..3: cell (x, y) of image 1 matches (x, y) here
    s2 = torch.roll(codes, 1, dims=2).unsqueeze(0)  # student's cell (x, y) of image 1 matches (x + 1, y)
    assert nn_agreement(t1, t2, t1, t2).tolist() == [1.0]
    assert nn_agreement(t1, s2, t1, t2, tolerance=0).tolist() == [0.0]
    assert nn_agreement(t1, s2, t1, t2, tolerance=1).tolist() == [1.0]
    with pytest.raises(ValueError, match="grids must agree"):
        nn_agreement(t1, t2, t1, t2[..., :3])
