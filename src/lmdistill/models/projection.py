"""A learned linear map from the student's hidden width to the teacher's, for feature losses.

TinyBERT (Jiao et al., 2020), sec. 3.1, eqs. 8-9 learn ``W_h`` / ``W_e`` so that ``MSE(H^S W_h, H^T)`` is
defined when the widths differ. Build a :class:`Projection` only when the widths differ or the user asks
for one; with equal widths and no request, the caller compares the hidden states directly.
"""

from __future__ import annotations

import torch
from torch import nn


class Projection(nn.Module):
    """``Linear(student_dim -> teacher_dim)`` applied to the last dim: ``(..., d_s) -> (..., d_t)``.

    Initialisation: bias 0; weight = identity when the widths are equal (the projection starts as a no-op),
    otherwise (semi-)orthogonal (``nn.init.orthogonal_``): when widening (``d_t > d_s``) it preserves the
    norm of every student vector exactly, when narrowing it is an orthogonal projection. Either way the
    projected student starts on the scale of its own hidden states rather than being shrunk toward 0 (as
    BERT's N(0, 0.02) init used by TinyBERT's code would do), so the first feature losses are not dominated
    by a scale mismatch.

    The state dict holds ``linear.weight`` ``(d_t, d_s)`` and ``linear.bias`` ``(d_t,)``. The input is cast
    to the weight's dtype, so a bf16 student may feed a float32 projection.
    """

    def __init__(self, student_dim: int, teacher_dim: int, bias: bool = True):
        super().__init__()
        if student_dim < 1 or teacher_dim < 1:
            raise ValueError(f"Projection widths must be positive, got {student_dim} -> {teacher_dim}")
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.linear = nn.Linear(student_dim, teacher_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.student_dim == self.teacher_dim:
                nn.init.eye_(self.linear.weight)
            else:
                nn.init.orthogonal_(self.linear.weight)
            if self.linear.bias is not None:
                self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.student_dim:
            raise ValueError(f"Projection expects last dim {self.student_dim}, got shape {tuple(x.shape)}")
        return self.linear(x.to(self.linear.weight.dtype))
