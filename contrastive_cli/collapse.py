"""Collapse diagnostics (../shared/protocols.md §5): are an encoder's embeddings near-constant (complete collapse)
or confined to a few directions (dimensional collapse)? `inspect-collapse` computes all of them on N images; the
pretraining monitor computes the two cheap ones (std of normalised embeddings, effective rank) every epoch."""

from __future__ import annotations

import json
import math
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from . import checkpoint as ckpt
from .augment import ViewAugment, center_view
from .errors import UserError
from .evaluate import load_encoder, open_data
from .methods import SPECS
from .methods.base import build_method
from .methods.fields import DataFacts
from .plot import spectrum_plot
from .runtime import default_workers, pick_device, seed_step
from .spec import SMALL_IMAGE, AugmentSpec, PretrainSpec

HEALTHY = "healthy"
DIMENSIONAL = "dimensional collapse"
COMPLETE = "complete collapse"
SEVERITY = {HEALTHY: 0, DIMENSIONAL: 1, COMPLETE: 2}


def normalized(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z.float(), dim=1)


def std_of_normalized(z: torch.Tensor) -> float:
    """SimSiam's collapse indicator: mean over dimensions of the std over samples of z/‖z‖; 1/√d is healthy
    (an isotropic Gaussian), 0 is a constant output."""
    return normalized(z).std(dim=0).mean().item()


def spread(z: torch.Tensor) -> float:
    """1 − ‖mean of z/‖z‖‖², the total variance of the normalised embeddings (one minus the mean cosine over all
    pairs): 0 when every image gets the same direction, 1 for embeddings spread evenly around the sphere. Unlike
    the per-dimension std it does not depend on how many dimensions the variance is spread over."""
    return 1.0 - normalized(z).mean(dim=0).pow(2).sum().item()


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of the N×d embeddings,
    between 1 and min(N, d)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum().clamp_min(1e-300) + eps
    return math.exp(-(p * p.log()).sum().item())


def covariance_spectrum(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues, largest first, of the d×d covariance of the l2-normalised embeddings (Jing et al. 2022): a
    tail of values near zero marks collapsed dimensions; isotropic embeddings give 1/d each."""
    zn = normalized(z).double()
    cov = torch.cov(zn.T) if len(zn) > 1 else torch.zeros(zn.shape[1], zn.shape[1], dtype=zn.dtype)
    return torch.linalg.svdvals(cov.reshape(zn.shape[1], zn.shape[1])).float()


def dims_for_variance(spectrum: torch.Tensor, share: float = 0.99) -> int:
    """How many of the largest covariance eigenvalues hold `share` of the variance (0 for a constant output)."""
    total = spectrum.sum()
    if total <= 0:
        return 0
    return int((spectrum.cumsum(0) / total < share).sum().item()) + 1


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2) -> float:
    """Wang & Isola: E‖f(x) − f(y)‖^α over positive pairs of normalised embeddings; lower is better."""
    return (normalized(z1) - normalized(z2)).norm(dim=1).pow(alpha).mean().item()


def uniformity(z: torch.Tensor, t: float = 2) -> float:
    """Wang & Isola: log E exp(−t‖f_i − f_j‖²) over all pairs i<j; more negative is better, collapse gives 0."""
    return torch.pdist(normalized(z).double()).pow(2).mul(-t).exp().mean().log().item()


def pair_cosines(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of positive pairs (two views of one image) and of all other pairs; both near 1 in collapse."""
    sim = normalized(z1) @ normalized(z2).T
    n = len(sim)
    positive = sim.diagonal().mean().item()
    negative = ((sim.sum() - sim.diagonal().sum()) / max(1, n * n - n)).item()
    return positive, negative


def knn_agreement(z: torch.Tensor, labels: torch.Tensor, k: int = 10) -> tuple[float, float]:
    """Share of each image's k nearest neighbours (cosine, itself excluded) that have its label, and the share a
    label-blind embedding would get (the sum of squared class frequencies)."""
    zn = normalized(z)
    k = min(k, len(zn) - 1)
    agree = 0.0
    for start in range(0, len(zn), 1024):
        sim = zn[start:start + 1024] @ zn.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -2.0
        neighbours = sim.topk(k, dim=1).indices
        agree += (labels[neighbours] == labels[start:start + len(sim), None]).float().sum().item()
    freq = torch.bincount(labels).float() / len(labels)
    return agree / (len(zn) * k), (freq ** 2).sum().item()


def cheap_stats(z: torch.Tensor, distribution: bool = False) -> dict:
    """The monitor's statistics: std of normalised embeddings (with its ratio to 1/√d), spread, effective rank, and
    for a representation that is a probability distribution over its d outputs (DINO's teacher) its entropies."""
    n, d = z.shape
    std = std_of_normalized(z)
    rank = rankme(z)
    stats = {"dim": d, "std": std, "std_ratio": std * math.sqrt(d), "spread": spread(z), "rank": rank,
             "rank_max": min(n, d), "rank_share": rank / min(n, d)}
    return {**stats, **(entropy_stats(z) if distribution else {})}


def entropy_stats(p: torch.Tensor) -> dict:
    """Fig. 7 of DINO for N×K probability rows: the mean entropy of one image's distribution and the entropy of the
    mean distribution, each as a share of log K (1: uniform), and exp of the latter, the outputs in use."""
    log_k = math.log(p.shape[1])
    marginal = torch.special.entr(p.double().mean(0)).sum().item()
    return {"entropy_share": torch.special.entr(p.double()).sum(1).mean().item() / log_k,
            "marginal_share": marginal / log_k, "outputs_in_use": math.exp(marginal)}


def judge(stats: dict, thresholds) -> tuple[str, str]:
    """(verdict, the numbers that led to it) for one representation's cheap_stats; `thresholds`: CollapseThresholds."""
    if "entropy_share" in stats:
        return judge_distribution(stats, thresholds)
    d = stats["dim"]
    spread_line = (f"spread {stats['spread']:.3f} (std of normalised embeddings {stats['std_ratio']:.2f} × the "
                   f"healthy 1/√{d})")
    rank_line = f"effective rank {stats['rank']:.1f} = {stats['rank_share']:.1%} of the {stats['rank_max']} possible"
    if stats["spread"] < thresholds.min_spread:
        return COMPLETE, (f"{spread_line}, below the {thresholds.min_spread} threshold: the embeddings are nearly "
                          "constant")
    if stats["rank_share"] < thresholds.min_rank_share:
        return DIMENSIONAL, (f"{rank_line}, below the {thresholds.min_rank_share:.1%} threshold: the embeddings fill "
                             "few directions")
    return HEALTHY, f"{spread_line}; {rank_line}"


def judge_distribution(stats: dict, thresholds) -> tuple[str, str]:
    """A distribution collapses in two ways (DINO Sec. 5.3): uniform for every image (its entropy → log K), or one-hot
    on the same output for every image (the entropy of the mean distribution → 0). Its effective rank is no test: a
    healthy teacher uses a few dozen of its K outputs for ten classes, which reads as dimensional collapse."""
    k = stats["dim"]
    entropy_line = f"mean entropy {stats['entropy_share']:.1%} of log {k}"
    marginal_line = (f"entropy of the mean distribution {stats['marginal_share']:.1%} of log {k} "
                     f"({stats['outputs_in_use']:.1f} outputs in use)")
    if stats["entropy_share"] > thresholds.max_entropy_share:
        return COMPLETE, (f"{entropy_line}, above the {thresholds.max_entropy_share:.0%} threshold: every image gets "
                          "a nearly uniform distribution")
    if stats["marginal_share"] < thresholds.min_marginal_share:
        return COMPLETE, (f"{marginal_line}, below the {thresholds.min_marginal_share:.0%} threshold: nearly every "
                          "image goes to the same few outputs")
    return HEALTHY, f"{entropy_line}; {marginal_line}"


def worst(verdicts) -> str:
    return max(verdicts, key=SEVERITY.__getitem__, default=HEALTHY)


def full_stats(center: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, labels, distribution: bool) -> dict:
    """Every diagnostic for one representation: centre views for the spread, augmented pairs for the rest."""
    spectrum = covariance_spectrum(center)
    positive, negative = pair_cosines(view1, view2)
    out = {**cheap_stats(center, distribution), "healthy_std": 1 / math.sqrt(center.shape[1]), "dims_99": dims_for_variance(spectrum),
           "alignment": alignment(view1, view2), "uniformity": uniformity(torch.cat([view1, view2])),
           "positive_cosine": positive, "negative_cosine": negative, "spectrum": spectrum.tolist()}
    if labels is not None:
        out["knn_agreement"], out["knn_chance"] = knn_agreement(center, labels)
    return out


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(spectrum, width: int = 48, floor: float = 1e-12) -> str:
    """The log spectrum, largest first, as one line of block characters (resampled to `width` columns)."""
    values = torch.as_tensor(spectrum, dtype=torch.float64).clamp_min(floor).log10()
    if len(values) > width:
        values = values[torch.linspace(0, len(values) - 1, width).round().long()]
    lo, hi = values.min().item(), values.max().item()
    scale = (len(SPARK) - 1) / (hi - lo) if hi > lo else 0.0
    return "".join(SPARK[round((v - lo) * scale)] for v in values.tolist())


# ---- the encoder's representations ---------------------------------------------------------------


class CollapseMonitor:
    """Each epoch of pretraining: spread and effective rank of the method's embeddings (Method.embeddings: the
    encoder's features and the projector's output) on a fixed batch of training images; centre views in eval mode,
    so training state and RNG are untouched."""

    def __init__(self, data, spec, device):
        m = spec.monitor
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(spec.runtime.seed + 17))
        x, _, _ = next(data.batches(pick[:m.images].sort().values, m.images, workers=0))
        self.views = center_view(x.to(device), spec.data.image_size, data.mean, data.std)
        self.thresholds = m
        self.patience, self.streak = m.patience, 0

    @torch.no_grad()
    def __call__(self, method) -> dict:
        method.eval()
        embeddings = method.embeddings(self.views)
        method.train()
        stats = {name: cheap_stats(z, name in method.distributions) for name, z in embeddings.items()}
        verdicts = {name: judge(st, self.thresholds) for name, st in stats.items()}
        verdict = worst(v for v, _ in verdicts.values())
        reason = "; ".join(f"{name}: {why}" for name, (v, why) in verdicts.items() if v == verdict)
        self.streak = self.streak + 1 if verdict != HEALTHY else 0
        figures = {name: {k: round(v, 4) for k, v in st.items() if k not in ("dim", "std", "rank_max")}
                   for name, st in stats.items()}
        return {"verdict": verdict, "reason": reason, "alarm": self.streak >= self.patience, **figures}


def representations(path, device) -> tuple[Callable[[torch.Tensor], dict], dict, frozenset]:
    """A function from a batch to its named embeddings, the checkpoint's metadata, and the names of those that are
    probability distributions. A pretrain checkpoint gives the method's own (Method.embeddings: the encoder's
    features and the embedding its loss saw, the one SimSiam's and Jing et al.'s curves are drawn on); a transfer
    checkpoint its encoder's features."""
    meta = ckpt.read_meta(path, kinds=("pretrain", "transfer"))
    if meta["kind"] != "pretrain":
        backbone, meta = load_encoder(path, device)
        return lambda x: {"backbone": backbone(x)}, meta, frozenset()
    tensors, meta = ckpt.load(path, kinds=("pretrain",))
    try:
        spec = PretrainSpec.model_validate(meta["spec"])
    except ValidationError as err:
        raise UserError(f"The run spec stored in {path} does not validate with this version of contrastive "
                        f"({err.error_count()} problem(s), first: {'.'.join(map(str, err.errors()[0]['loc']))}: "
                        f"{err.errors()[0]['msg']})", "inspect it with the version that wrote it, or export its "
                        "backbone and inspect that") from None
    data = DataFacts(meta["data"]["images"], mean=tuple(meta["normalize"]["mean"]), std=tuple(meta["normalize"]["std"]))
    method = build_method(spec, data)
    ckpt.load_state(method, None, {k: v for k, v in tensors.items() if k.startswith(("backbone.", "method."))})
    method.eval().requires_grad_(False).to(device)
    return method.embeddings, meta, method.distributions


def inspection_augment(meta: dict) -> AugmentSpec:
    """The pretraining augmentation of the checkpoint (its positive pairs); MoCo v2's recipe for others."""
    if meta["kind"] == "pretrain":
        return AugmentSpec.model_validate(meta["spec"]["augment"])
    return AugmentSpec.model_validate(SPECS["mocov2"].recipe(meta["image_size"] < SMALL_IMAGE)["augment"])


@torch.no_grad()
def embed_views(embed: Callable[[torch.Tensor], dict], data, meta: dict, device, batch_size: int, workers: int,
                seed: int) -> dict:
    """For each representation: embeddings of the centre view and of two augmented views of every image."""
    size, norm = meta["image_size"], meta["normalize"]
    augment = inspection_augment(meta)
    pair = [ViewAugment(augment, size, norm["mean"], norm["std"], view=v) for v in (0, 1)]
    generator = torch.Generator(device=device)
    out: dict[str, tuple[list, list, list]] = {}
    for step, (x, _, _) in enumerate(data.batches(torch.arange(len(data)), batch_size, workers=workers)):
        x = x.to(device, non_blocking=True)
        seed_step(generator, seed, step)
        views = [center_view(x, size, norm["mean"], norm["std"])] + [p(x, generator) for p in pair]
        for i, view in enumerate(views):
            for name, z in embed(view).items():
                out.setdefault(name, ([], [], []))[i].append(z.float().cpu())
    return {name: [torch.cat(s) for s in stores] for name, stores in out.items()}


def open_inspected(spec, meta: dict):
    """N images of --data (default: the checkpoint's data), from its test split when it has one."""
    try:
        return open_data(spec.data, meta, "test", spec.runtime.seed, spec.data.subset, subset_flag=None)
    except UserError:  # --images is an upper bound: a smaller dataset is inspected whole
        return open_data(spec.data, meta, "pretrain", spec.runtime.seed, spec.data.subset, subset_flag=None)


def inspect_collapse(spec) -> dict:
    """Every diagnostic for each representation, a verdict per representation and overall, and the report files."""
    device = pick_device(spec.runtime.device)
    path = ckpt.resolve_path(spec.checkpoint)
    report = spec.report or path.with_name(path.name.removesuffix(".safetensors") + ".collapse.json")
    ckpt.check_output(report, "--report", (path,), "report", spec.force)
    ckpt.check_output(report.with_suffix(".png"), "--report", (path,), "report", spec.force)
    embed, meta, distributions = representations(path, device)
    data = open_inspected(spec, meta)
    embeddings = embed_views(embed, data, meta, device, spec.runtime.batch_size,
                             default_workers(spec.runtime.workers), spec.runtime.seed)
    th = spec.thresholds
    result = {"checkpoint": str(path), "method": meta.get("method"), "backbone": meta["backbone"]["name"],
              "data": data.name, "images": len(data), "thresholds": th.model_dump(), "representations": {}}
    for name, (center, view1, view2) in embeddings.items():
        stats = full_stats(center, view1, view2, data.labels, name in distributions)
        stats["verdict"], stats["reason"] = judge(stats, th)
        result["representations"][name] = stats
    result["verdict"] = worst(r["verdict"] for r in result["representations"].values())
    result["report"], result["plot"] = str(report), str(report.with_suffix(".png"))
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        spectrum_plot({n: r["spectrum"] for n, r in result["representations"].items()}, report.with_suffix(".png"),
                      title=f"{result['method'] or meta['kind']} · {result['backbone']} · {data.name}: {result['verdict']}")
        report.write_text(json.dumps(result, indent=1) + "\n")
    except OSError as err:
        raise UserError(f"The report could not be written to {report} ({err.strerror or err})",
                        "pass --report with a path in a writable folder") from None
    return result
