"""DINO (Caron et al. 2021), self-distillation with no labels: a student (backbone + DINO head) predicts on every
crop the output distribution that its EMA teacher gives the two global crops of the same image. No negatives, no
predictor: the teacher's output is centred (so no dimension can dominate) and sharpened (so it cannot become
uniform), and the two balance each other (Sec. 5.3). The teacher is the network that is exported and evaluated."""

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import dino_loss, gathering
from .base import Method, cosine_momentum, encode_crops, momentum_copy


class WeightNormLinear(nn.Module):
    """Linear(no bias) whose output rows are w_k = g_k · v_k/‖v_k‖ (weight normalisation, the official
    nn.utils.weight_norm, with its parameter names). With g fixed at 1 every output is the cosine of the
    L2-normalised input with a unit vector: logits in [-1, 1] whatever v's scale."""

    def __init__(self, in_dim: int, out_dim: int, train_gain: bool):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=train_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """vision_transformer.DINOHead: Linear → [BN] → GELU → Linear → [BN] → GELU → Linear(→ bottleneck),
    L2-normalise, weight-normalised Linear(bottleneck → K, no bias). The MLP starts from N(0, 0.02²) weights."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, bn: bool, norm_last_layer: bool):
        super().__init__()
        layers = []
        for width_in in (in_dim, hidden):
            layers += [nn.Linear(width_in, hidden), *([nn.BatchNorm1d(hidden)] if bn else []), nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck, out_dim, train_gain=not norm_last_layer)

    def bottleneck(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(h), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(h))


class DINO(Method):
    name = "dino"
    distributions = frozenset({"teacher_probs"})

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        s = self.spec
        self.epochs = spec.optim.epochs  # the teacher-temperature and frozen-last-layer schedules count epochs
        self.head = DINOHead(feature_dim, s.proj_hidden_dim, s.bottleneck_dim, s.out_dim, s.head_bn, s.norm_last_layer)
        self.teacher_backbone = momentum_copy(backbone)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, s.out_dim))  # saved in checkpoints: resume is exact

    def momentum_pairs(self):
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def momentum(self, progress):
        return cosine_momentum(self.spec.momentum, progress)  # 0.996 → 1, per step

    def parameter_groups(self):
        # the last layer in a group of its own: it has no gradient in the first epoch, and fused SGD steps a group's
        # momentum buffers all at once, so a group cannot mix parameters with and without them
        last = list(self.head.last_layer.parameters())
        rest = [p for p in self.parameters() if p.requires_grad and all(p is not q for q in last)]
        return [{"params": rest}, {"params": [p for p in last if p.requires_grad]}]

    def exported_encoder(self):
        return self.teacher_backbone  # the paper evaluates the teacher, which is better throughout training

    def teacher_temperature(self, progress: float) -> float:
        """The official schedule, one value per epoch: np.linspace(warm-up value, τ_t, W)[epoch] for the first W
        epochs, then τ_t. Without sharpening the teacher's temperature is the student's."""
        s = self.spec
        if not s.sharpening:
            return s.student_temp
        epoch, warmup = int(progress * self.epochs + 1e-9), s.warmup_teacher_temp_epochs
        if epoch >= warmup:
            return s.teacher_temp
        return s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * epoch / max(1, warmup - 1)

    def teacher_probs(self, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
        """P_t = softmax((g_t − c)/τ_t): centred (unless ablated), then sharpened."""
        centred = teacher_out.float() - self.center if self.spec.centering else teacher_out.float()
        return F.softmax(centred / temperature, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """c ← m·c + (1 − m)·mean of the teacher's outputs over the global batch (all processes)."""
        total, count = teacher_out.float().sum(0, keepdim=True), len(teacher_out)
        if gathering():
            torch.distributed.all_reduce(total)
            count *= torch.distributed.get_world_size()
        m = self.spec.center_momentum
        self.center.mul_(m).add_(total / count, alpha=1 - m)

    def forward(self, views, indices=None, progress=0.0):
        crops, n = len(views), len(views[0])
        student = self.head(encode_crops(self.backbone, views)).unflatten(0, (crops, n))  # every crop
        with torch.no_grad():
            teacher = self.teacher_head(encode_crops(self.teacher_backbone, views[:2]))  # the 2 global crops only
            probs = self.teacher_probs(teacher, self.teacher_temperature(progress))
        loss = dino_loss(student, probs.unflatten(0, (2, n)), self.spec.student_temp)
        self.update_center(teacher)  # after the loss, which used the centre of earlier batches
        # Fig. 7's collapse readouts: the teacher's entropy (→ 0: one-hot, → log K: uniform) and KL(P_t ‖ P_s)
        # = H(P_t, P_s) − H(P_t), which goes to 0 in both collapses (every teacher view meets as many students);
        # the entropy of the batch's mean P_t tells one dimension taking every image (→ 0) from a clustering (high)
        entropy = torch.special.entr(probs).sum(-1).mean()
        return {"loss": loss, "teacher_entropy": entropy, "kl": loss.detach() - entropy,
                "teacher_marginal_entropy": torch.special.entr(probs.mean(0)).sum()}

    def before_optimizer_step(self, progress):
        s = self.spec
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if s.clip_grad and grads:  # utils.clip_gradients: each parameter's gradient on its own, not the global norm
            norms = torch._foreach_norm(grads)
            torch._foreach_mul_(grads, [(s.clip_grad / (norm + 1e-6)).clamp(max=1.0) for norm in norms])
        if progress * self.epochs < s.freeze_last_layer:  # the first epoch(s): no gradient, no step, no decay
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def embeddings(self, x):
        """The teacher's backbone features, its L2-normalised bottleneck, and its output distribution P_t at the
        final teacher temperature, centred as in training: Sec. 5.3's two collapses are read off P_t's entropies
        (uniform: each image's entropy → log K; one-hot: the mean distribution's → 0), see collapse.judge_distribution."""
        h = self.teacher_backbone(x)
        z = self.teacher_head.bottleneck(h)
        temperature = self.spec.teacher_temp if self.spec.sharpening else self.spec.student_temp
        return {"backbone": h, "head": z, "teacher_probs": self.teacher_probs(self.teacher_head.last_layer(z), temperature)}
