"""Jigsaw puzzles as Noroozi & Favaro 2016 describe them: a fixed set of tile orders far apart in Hamming distance,
tiles normalised one by one, shuffled by a permutation drawn from the set whose index is the label, a context-free
network (each tile encoded alone), and the plain backbone as the exported encoder."""

import math

import pytest
import torch

from contrastive_cli.methods.base import build_method
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.methods.jigsaw import all_permutations, maximal_hamming_permutations, normalise_tiles
from contrastive_cli.methods.jigsaw_spec import jigsaw_grid
from contrastive_cli.spec import PretrainSpec, SpecError, resolve_pretrain


def resolved(image_size=28, channels=1, **method):
    spec = PretrainSpec.model_validate({"method": {"name": "jigsaw", **method}, "backbone": {"name": "small_cnn"},
                                        "optim": {"batch_size": 4}})
    return resolve_pretrain(spec, image_size, 100, channels)


def hamming(perms: torch.Tensor) -> torch.Tensor:
    """The pairwise Hamming distances of a set, off the diagonal."""
    d = (perms[:, None] != perms[None]).sum(-1)
    return d[~torch.eye(len(perms), dtype=torch.bool)].float()


# ---- the permutation set -----------------------------------------------------------------------------------------


def test_all_9_factorial_orders_are_enumerated_once():
    perms = all_permutations()
    assert perms.shape == (math.factorial(9), 9)
    assert torch.equal(perms.sort(1).values, torch.arange(9, dtype=torch.uint8).expand(len(perms), 9))
    assert len(torch.unique(perms.long() @ (9 ** torch.arange(9)))) == len(perms)  # as base-9 numbers: distinct


@pytest.mark.parametrize("count", [2, 9, 100])
def test_the_set_has_the_asked_size_of_distinct_permutations_of_the_nine_tiles(count):
    perms = maximal_hamming_permutations(count)
    assert perms.shape == (count, 9)
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(count, 9))
    assert len({tuple(p) for p in perms.tolist()}) == count


@pytest.mark.parametrize("count", [2, 5, 9])
def test_up_to_nine_permutations_differ_in_every_place(count):
    """9 permutations can pairwise disagree at all 9 places (the rows of a Latin square); the greedy choice finds
    them, since k such permutations always leave a perfect matching of places to unused tiles (Hall)."""
    assert hamming(maximal_hamming_permutations(count)).min() == 9


def test_a_hundred_are_farther_apart_than_random_permutations():
    chosen = hamming(maximal_hamming_permutations(100))
    perms = all_permutations()
    random = hamming(perms[torch.randperm(len(perms), generator=torch.Generator().manual_seed(0))[:100]])
    assert chosen.min() >= 6 > random.min()  # docs: min 6, mean 8.08 (random: min 2, mean 8.0)
    assert chosen.mean() > random.mean()


def test_every_run_gets_the_same_set_and_checkpoints_carry_it():
    a = build_method(resolved(permutations=30), DataFacts(100, 1))
    b = build_method(resolved(permutations=30), DataFacts(100, 1))
    assert torch.equal(a.permutation_set, b.permutation_set)
    assert "permutation_set" in a.state_dict() and a.classifier[-1].out_features == 30


# ---- the puzzle --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, grid", [(28, (7, 2, 1)), (32, (8, 2, 1)), (225, (64, 11, 5))])
def test_recipe_scales_the_papers_75px_cells_with_64px_tiles_to_the_view(size, grid):
    spec = resolved(size, 3).method
    assert (spec.grid_patch, spec.grid_gap, spec.grid_jitter) == jigsaw_grid(size) == grid
    assert 3 * (grid[0] + grid[1]) <= size and 2 * grid[2] <= grid[1]  # each tile stays inside its cell


def test_a_grid_wider_than_the_view_is_refused_naming_the_flags():
    with pytest.raises(SpecError) as err:
        resolved(28, grid_patch=9, grid_gap=1)
    assert any("--grid-patch" in p and "28 px" in p for p in err.value.problems)


def test_place_i_of_a_puzzle_shows_the_tile_its_permutation_puts_there():
    torch.manual_seed(0)
    method = build_method(resolved(permutations=100), DataFacts(100, 1))
    tiles = torch.arange(9).float().view(1, 9, 1, 1, 1).expand(64, 9, 3, 7, 7)  # tile t is filled with t
    puzzles, labels = method.shuffle(tiles)
    assert torch.equal(puzzles[:, :, 0, 0, 0].long(), method.permutation_set[labels])
    assert labels.min() >= 0 and labels.max() < 100 and len(labels.unique()) > 30  # drawn from the whole set


def test_each_tile_is_normalised_on_its_own():
    tiles = torch.randn(4, 9, 3, 7, 7) * torch.rand(4, 9, 3, 1, 1) * 5 + torch.randn(4, 9, 3, 1, 1) * 3
    tiles[0, 0] = 2.0  # a flat tile: no division by zero
    out = normalise_tiles(tiles)
    assert torch.allclose(out.mean(dim=(-2, -1)), torch.zeros(4, 9, 3), atol=1e-5)
    assert torch.allclose(out[1:].std(dim=(-2, -1)), torch.ones(3, 9, 3), atol=1e-4)
    assert torch.isfinite(out).all() and (out[0, 0] == 0).all()


def test_the_network_is_context_free_below_fc7():
    """A tile's fc6 features do not change when the other tiles do (eval mode: no batch statistics)."""
    method = build_method(resolved(), DataFacts(100, 1)).eval()
    puzzles = torch.randn(2, 9, 3, 7, 7)
    other = puzzles.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])
    with torch.no_grad():
        f, g = (method.fc6(method.backbone(p.flatten(0, 1))).view(2, 9, -1) for p in (puzzles, other))
    assert torch.allclose(f[:, 0], g[:, 0], atol=1e-6) and not torch.allclose(f[:, 1:], g[:, 1:])


def test_the_loss_starts_near_chance_and_the_puzzle_accuracy_is_logged():
    torch.manual_seed(0)
    method = build_method(resolved(permutations=100), DataFacts(100, 1))
    out = method([torch.randn(8, 3, 28, 28)])
    assert abs(out["loss"].item() - math.log(100)) < 0.5 and 0 <= out["puzzle_acc"].item() <= 1


def test_the_exported_encoder_is_the_plain_backbone_on_whole_images():
    run = resolved(28)
    method = build_method(run, DataFacts(100, 1))
    assert method.exported_encoder() is method.backbone
    assert "method" not in type(method).encoder_info(run, DataFacts(100, 1))
    assert method.exported_encoder()(torch.randn(2, 3, 28, 28)).shape == (2, method.feature_dim)
