"""CMC (Tian, Krishnan & Isola 2019): Contrastive Multiview Coding on the L and ab channels of Lab colour space.

One crop per image, converted to Lab; an L encoder and an ab encoder (each half as wide as the backbone), each
with a linear head to an L2-normalised embedding. L anchors are contrasted with the ab memory bank and ab anchors
with the L bank (NCE, as InstDisc), L = L(L→ab) + L(ab→L). The representation is both encoders' pooled features,
concatenated: the exported encoder takes the evaluations' normalised RGB views and does the conversion itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from ..losses import gather, global_mean, mi_bound, nce, gathered_rank, gathered_world
from ..models import SmallCNN, build_backbone
from .base import MemoryBank, Method

# skimage.color.rgb2lab: sRGB (D65) -> linear RGB -> XYZ -> CIE Lab
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))
WHITE_D65 = (0.95047, 1.0, 1.08883)
# train_CMC.py normalises each channel by the midpoint and half-width of its range over all sRGB colours
# (L 0..100, a -86.183..98.233, b -107.857..94.478), so each lies in [-1, 1].
LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] sRGB in [0, 1] -> CIE Lab (L in 0..100), as skimage.color.rgb2lab."""
    matrix = torch.tensor(XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device)
    return lab_of(rgb, matrix, torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1))


def lab_of(rgb: torch.Tensor, xyz_from_rgb: torch.Tensor, white: torch.Tensor) -> torch.Tensor:
    """rgb_to_lab with its constants as tensors (TorchScript cannot read the module's tuples)."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", xyz_from_rgb, linear) / white
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856).pow(1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def view_encoder(backbone: str, stem: str, in_channels: int, width: float) -> tuple[nn.Module, int]:
    """The backbone with `in_channels` inputs and `width` x its channels (CMC's resnet.py: the 64-channel stem is
    kept, the four stages are int(64 * width) x 1, 2, 4, 8 wide)."""
    if backbone == "small_cnn":
        net = SmallCNN(width=max(1, round(32 * width)))
        first = net.features[0][0]
        net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=2, padding=1, bias=False)
        return net, net.out_dim
    net, dim = build_backbone(backbone, stem)
    c = net.conv1
    net.conv1 = nn.Conv2d(in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    if width != 1:
        block, base = type(net.layer1[0]), int(64 * width)
        net.inplanes = c.out_channels  # torchvision's _make_layer builds from here
        for i in range(4):
            depth = len(getattr(net, f"layer{i + 1}"))
            setattr(net, f"layer{i + 1}", net._make_layer(block, base * 2 ** i, depth, stride=1 if i == 0 else 2))
        dim = base * 8 * block.expansion
    for m in net.modules():  # torchvision's initialisation, for the replaced modules too
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net, dim


class ViewMemoryBank(MemoryBank):
    """base.MemoryBank whose scores skip the [B, 1+K, d] gather of sampled entries when the bank is small: one
    matmul against the whole bank, then the sampled columns (same values; ~50x faster on CPU for 5k-50k images)."""

    def dots(self, f: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if len(self.features) <= 32 * rows.shape[1]:
            return (f @ self.features.clone().T).gather(1, rows)  # a copy: update() changes the bank in place
        return torch.bmm(self.features[rows], f.unsqueeze(2)).squeeze(2)

    def nce_scores(self, f, rows, temperature):
        scores = self.dots(f, rows).div(temperature).exp()
        self.z.copy_(torch.where(self.z < 0, global_mean(scores) * len(self.features), self.z))  # as base
        return scores / self.z


class LabInput(nn.Module):
    """What an encoder on Lab channels starts with: normalised RGB views (as every evaluation feeds them) to L and
    ab scaled as train_CMC.py does. CMC's LabEncoder, colorization's and split-brain's encoders build on it."""

    def __init__(self, mean, std):
        super().__init__()
        # not saved: they are in the checkpoint's encoder record, and state dicts stay weights only
        self.register_buffer("rgb_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("lab_mean", torch.tensor(LAB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("lab_std", torch.tensor(LAB_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("xyz_from_rgb", torch.tensor(XYZ_FROM_RGB), persistent=False)
        self.register_buffer("white", torch.tensor(WHITE_D65).view(1, 3, 1, 1), persistent=False)

    def lab_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised RGB -> (L [N, 1, H, W], ab [N, 2, H, W]), each scaled to about [-1, 1] as in the code."""
        lab = self.lab(x) if torch.jit.is_scripting() else self.lab_fp32(x)
        return lab[:, :1], lab[:, 1:]

    def lab(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.float() * self.rgb_std + self.rgb_mean).clamp(0, 1)
        return (lab_of(rgb, self.xyz_from_rgb, self.white) - self.lab_mean) / self.lab_std

    @torch.jit.unused
    def lab_fp32(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # colour maths in fp32, no gradient
            return self.lab(x)


class LabEncoder(LabInput):
    """The exported encoder: normalised RGB views in, the L and ab encoders' pooled features out, concatenated."""

    def __init__(self, backbone: str, stem: str, width: float, mean, std):
        super().__init__(mean, std)
        self.l_encoder, self.view_dim = view_encoder(backbone, stem, 1, width)
        self.ab_encoder, _ = view_encoder(backbone, stem, 2, width)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l, ab = self.lab_views(x)
        return self.l_encoder(l), self.ab_encoder(ab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.features(x), dim=1)  # the paper evaluates the concatenation


def lab_encoder_info(method: str, name: str, spec, data, width: float) -> dict:
    """The checkpoint record of a LabEncoder (CMC's, split-brain's): Method.encoder_info's format."""
    kwargs = {"backbone": spec.backbone.name, "stem": spec.backbone.stem, "width": width,
              "mean": list(data.mean), "std": list(data.std)}
    return {"method": method, "name": name, "kwargs": kwargs}


def build_lab_encoder(**kwargs) -> tuple[nn.Module, int]:
    """A LabEncoder from its record's kwargs, with the width of its concatenated features."""
    encoder = LabEncoder(**kwargs)
    return encoder, 2 * encoder.view_dim


class CMC(Method):
    name = "cmc"

    @classmethod
    def encoder_info(cls, spec, data):
        return lab_encoder_info(cls.name, "cmc_lab", spec, data, spec.method.width)

    build_encoder = staticmethod(build_lab_encoder)

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        spec = self.spec
        # the code's fc after each encoder's pooling, then l2norm
        self.l_head = nn.Linear(backbone.view_dim, spec.proj_dim)
        self.ab_head = nn.Linear(backbone.view_dim, spec.proj_dim)
        if spec.contrast != "in-batch":
            self.l_bank = ViewMemoryBank(data.images, spec.proj_dim)
            self.ab_bank = ViewMemoryBank(data.images, spec.proj_dim)

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std)]  # one crop: its L and ab channels are the two views

    def project(self, h_l, h_ab):
        return F.normalize(self.l_head(h_l), dim=1), F.normalize(self.ab_head(h_ab), dim=1)

    def forward(self, views, indices=None, progress=0.0):
        z_l, z_ab = self.project(*self.backbone.features(views[0]))
        s = self.spec
        if s.contrast == "in-batch":  # each anchor's positive is its own image's other view; the batch's are negatives
            # each process's anchors against the global batch's other view (gathered under torchrun)
            target = torch.arange(len(z_l), device=z_l.device) + gathered_rank() * len(z_l)
            loss_l = F.cross_entropy(z_l @ gather(z_ab).T / s.temperature, target)
            loss_ab = F.cross_entropy(z_ab @ gather(z_l).T / s.temperature, target)
            readout = mi_bound((loss_l + loss_ab) / 2, len(z_l) * gathered_world())
        else:
            rows = self.l_bank.sample(indices, s.negatives)  # the same draws for both directions, as in the code
            loss_l = self.bank_loss(z_l, self.ab_bank, rows)  # L anchors against the ab memory
            loss_ab = self.bank_loss(z_ab, self.l_bank, rows)
            readout = mi_bound((loss_l + loss_ab) / 2, 1 + s.negatives) if s.contrast == "softmax" else {}
            self.l_bank.update(z_l, indices, s.bank_momentum)
            self.ab_bank.update(z_ab, indices, s.bank_momentum)
        return {"loss": loss_l + loss_ab, "loss_l": loss_l.detach(), "loss_ab": loss_ab.detach(), **readout}

    def bank_loss(self, anchor, bank: ViewMemoryBank, rows):
        if self.spec.contrast == "softmax":  # (1+K)-way cross-entropy, the positive at column 0
            logits = bank.dots(anchor, rows) / self.spec.temperature
            return F.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long, device=rows.device))
        return nce(bank.nce_scores(anchor, rows, self.spec.temperature), len(bank.features))

    def embeddings(self, x):
        h_l, h_ab = self.backbone.features(x)
        z_l, z_ab = self.project(h_l, h_ab)
        return {"backbone": torch.cat([h_l, h_ab], 1), "l_head": z_l, "ab_head": z_ab}
