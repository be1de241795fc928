"""Block-wise hints: hand-computed loss, teacher forcing, architecture checks."""

import pytest
import timm
import torch
from torch import nn

from distilldift.errors import InvalidInputError
from distilldift.training.hints import HintTeacher, backbone_stages, hint_loss
from distilldift.weights import create_model


class Shift(nn.Module):
    def __init__(self, by: float):
        super().__init__()
        self.by = by

    def forward(self, x):
        return x + self.by


def test_hint_loss_hand_computed():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 2, 2)
    target = x * 2  # var (unbiased) of [0, 2, 4, 6] = 20 / 3
    # stage 1 outputs x + 1: squared errors 1, 0, 1, 4 -> MSE 1.5, / (20/3) = 0.225;
    # stage 2 is fed the *teacher's* state (target), not stage 1's output: target + 0 == its target -> 0
    loss = hint_loss([Shift(1.0), Shift(0.0)], [x, target, target])
    assert loss.item() == pytest.approx((1.5 / (20 / 3) + 0.0) / 2)
    with pytest.raises(ValueError, match="2 stages need 3 teacher states, got 2"):
        hint_loss([Shift(1.0), Shift(0.0)], [x, target])


def test_hint_teacher_gives_each_stage_output_and_checks_the_architecture():
    torch.manual_seed(0)
    teacher, student = create_model("lite", pretrained=False), create_model("lite", pretrained=False)
    hints = HintTeacher(teacher.backbone, student.backbone)
    hints.train()
    assert not hints.training and not any(p.requires_grad for p in hints.parameters())
    x = torch.randn(2, 3, 64, 64)
    states = hints(x)
    stages = backbone_stages(teacher.backbone)
    assert len(states) == len(stages) + 1 == 9
    assert [s.shape[1] for s in states[1:]] == [32, 16, 24, 40, 80, 112, 192, 320]
    assert torch.equal(states[3], stages[2](states[2]))
    # the same weights in the student give a zero loss; random ones do not
    student.backbone.load_state_dict(teacher.backbone.state_dict())
    assert hint_loss(backbone_stages(student.backbone.eval()), states).item() == pytest.approx(0.0, abs=1e-6)
    vit = create_model("dinov2_b14_reg", pretrained=False, embed_dim=32, depth=1, num_heads=2, img_size=112)
    with pytest.raises(InvalidInputError, match="EfficientNet/MobileNet-style backbone.*hint_weight=0"):
        HintTeacher(teacher.backbone, vit.backbone)
    other = timm.create_model("mobilenetv2_050")  # same layout (conv_stem, bn1, blocks), other shapes
    with pytest.raises(InvalidInputError, match="the teacher's architecture"):
        HintTeacher(teacher.backbone, other)
