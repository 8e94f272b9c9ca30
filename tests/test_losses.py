"""Each loss against a direct, loop-by-loop computation of its paper formula."""

import math

import torch
import torch.nn.functional as F

from contrastive_cli.losses import info_nce, negative_cosine, normalized_mse, nt_xent


def test_info_nce_is_k_plus_1_way_softmax_with_positive_first():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    queue, T = F.normalize(torch.randn(16, 8), dim=1), 0.2
    expected = 0.0
    for i in range(4):
        logits = [q[i] @ k[i]] + [q[i] @ n for n in queue]
        expected += -(logits[0] / T) + math.log(sum(math.exp(l / T) for l in logits))
    assert torch.allclose(info_nce(q, k, queue, T), torch.tensor(float(expected) / 4), atol=1e-5)


def test_info_nce_mutual_information_bound():
    # log(K+1) - L lower-bounds MI: perfectly separable keys push L to 0 (bound = log(K+1)); random ones sit near log(K+1).
    q = torch.eye(8)[:4]
    queue = torch.eye(8)[4:]
    assert info_nce(q, q, queue, 0.01) < 1e-3
    torch.manual_seed(0)
    r = F.normalize(torch.randn(512, 64), dim=1)
    loss = info_nce(r, F.normalize(torch.randn(512, 64), dim=1), F.normalize(torch.randn(255, 64), dim=1), 1.0)
    assert abs(loss.item() - math.log(256)) < 0.05


def test_nt_xent_matches_paper_formula_over_2n_anchors():
    torch.manual_seed(0)
    z1, z2, T = torch.randn(5, 6), torch.randn(5, 6), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, total = 5, 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(z[i] @ z[j] / T) for j in range(2 * n) if j != i)
        total += -math.log(math.exp(z[i] @ z[pos] / T) / denom)
    assert torch.allclose(nt_xent(z1, z2, T), torch.tensor(float(total) / (2 * n)), atol=1e-5)


def test_negative_cosine_minimum_is_minus_one_and_blocks_target_gradient():
    p = torch.randn(3, 4, requires_grad=True)
    z = torch.randn(3, 4, requires_grad=True)
    assert torch.allclose(negative_cosine(z, z), torch.tensor(-1.0))
    negative_cosine(p, z).backward()
    assert z.grad is None and p.grad is not None


def test_normalized_mse_equals_squared_distance_of_unit_vectors():
    p, z = torch.randn(6, 5), torch.randn(6, 5)
    direct = ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(dim=1).mean()
    assert torch.allclose(normalized_mse(p, z), direct, atol=1e-6)
