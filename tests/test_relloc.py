"""Relative location as Doersch et al. 2015 describe it: a 3x3 grid of patches with gaps and jitter cut from one view
(the grid sampler is shared with jigsaw and tested here), the 8 (centre, neighbour) pairs of every image labelled by
the neighbour's place, colour dropping on colour data only, and the plain backbone as the exported encoder."""

import pytest
import torch
from torch import nn

from contrastive_cli.methods.base import build_method
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.methods.grid import grid_patches
from contrastive_cli.methods.relloc import NEIGHBOURS, drop_colours
from contrastive_cli.methods.relloc_spec import relloc_grid
from contrastive_cli.spec import PretrainSpec, SpecError, resolve_pretrain

# where class k's neighbour lies relative to the centre, (rows, columns): the numbering relloc.py documents
LAYOUT = {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1), 4: (0, 1), 5: (1, -1), 6: (1, 0), 7: (1, 1)}


def resolved(image_size=28, channels=1, **method):
    spec = PretrainSpec.model_validate({"method": {"name": "relloc", **method}, "backbone": {"name": "small_cnn"},
                                        "optim": {"batch_size": 4}})
    return resolve_pretrain(spec, image_size, 100, channels)


def coordinates(batch=4, size=28):
    """[B, 3, S, S]: channel 0 holds each pixel's row, channel 1 its column, channel 2 the image's index."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    one = torch.stack([rows, cols, torch.zeros_like(rows)]).float()
    return torch.stack([one + torch.tensor([0.0, 0.0, i]).view(3, 1, 1) for i in range(batch)])


# ---- the grid (grid.py) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, grid", [(28, (6, 3, 1)), (32, (7, 3, 1)), (96, (23, 11, 2)), (224, (54, 27, 4))])
def test_recipe_scales_the_papers_96px_patches_48px_gaps_and_7px_jitter_to_the_view(size, grid):
    spec = resolved(size, 3).method
    assert (spec.grid_patch, spec.grid_gap, spec.grid_jitter) == relloc_grid(size) == grid
    assert 3 * grid[0] + 2 * grid[1] + 2 * grid[2] <= size


def test_given_grid_sizes_are_kept_and_a_grid_wider_than_the_view_is_refused_naming_the_flags():
    spec = resolved(28, grid_patch=5, grid_gap=2, grid_jitter=0).method
    assert (spec.grid_patch, spec.grid_gap, spec.grid_jitter) == (5, 2, 0)
    with pytest.raises(SpecError) as err:
        resolved(28, grid_patch=8)  # 24 + 2 x 3 + 2 x 1 = 32 px > 28
    (problem,) = err.value.problems
    assert "--grid-patch" in problem and "--grid-gap" in problem and "32 px" in problem and "28 px" in problem


def test_without_jitter_or_free_space_the_patches_are_the_grid_cells_in_raster_order():
    x = torch.randn(2, 3, 26, 26)  # 3 x 6 + 2 x 4 = 26: the frame fills the view
    patches = grid_patches(x, patch=6, gap=4, jitter=0)
    assert patches.shape == (2, 9, 3, 6, 6)
    for r in range(3):
        for c in range(3):
            assert torch.equal(patches[:, 3 * r + c], x[:, :, 10 * r:10 * r + 6, 10 * c:10 * c + 6])


def test_each_patch_is_a_crop_within_its_jitter_of_a_common_uniformly_placed_frame():
    x = coordinates(64, 28)
    p, gap, jitter = 6, 3, 1
    patches = grid_patches(x, p, gap, jitter, torch.Generator().manual_seed(0))
    top, left = patches[:, :, 0, 0, 0], patches[:, :, 1, 0, 0]  # [B, 9]: each patch's top-left pixel
    # a crop: rows and columns advance by one pixel inside the patch, and each patch stays in its image
    steps = torch.arange(p).float()
    assert (patches[:, :, 0] - top[..., None, None] == steps.view(p, 1)).all()
    assert (patches[:, :, 1] - left[..., None, None] == steps.view(1, p)).all()
    assert torch.equal(patches[:, :, 2], x[:, 2, :p, :p].unsqueeze(1).expand(-1, 9, -1, -1))
    cells = torch.arange(3).repeat_interleave(3).float(), torch.arange(3).repeat(3).float()
    for corner, cell in ((top, cells[0]), (left, cells[1])):
        shift = corner - cell * (p + gap)  # origin + the patch's own offset
        origin = shift.min(1).values
        assert (shift - origin[:, None]).max() <= 2 * jitter  # offsets within [0, 2 jitter]
        assert origin.max() <= 28 - (3 * p + 2 * gap + 2 * jitter) + 2 * jitter
    assert len(set(top[:, 0].tolist())) > 1, "the frame and the jitter move"


def test_the_grid_draws_from_the_generator_it_is_given():
    x = torch.randn(8, 3, 28, 28)
    a, b = (grid_patches(x, 6, 3, 1, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b)


# ---- the task ----------------------------------------------------------------------------------------------------


class Coordinates(nn.Module):
    """Stands in for the patch encoder: a patch's mean (row, column)."""

    def forward(self, patches):
        return patches[:, :2].mean(dim=(2, 3))


class Recorder(nn.Module):
    """Stands in for the pair classifier: keeps its input, answers zeros."""

    def forward(self, pairs):
        self.pairs = pairs
        return torch.zeros(*pairs.shape[:-1], 8)


def test_neighbour_k_of_every_pair_lies_where_class_k_says():
    """Patches that carry their pixel coordinates, encoded to their mean (row, column): the pair with label k has
    its neighbour up-left of the centre for k = 0, right of it for k = 4, below it for k = 6, ..."""
    method = build_method(resolved(28), DataFacts(100, 1))
    method.backbone = Coordinates()
    method.fc6, method.classifier = nn.Identity(), Recorder()
    out = method([coordinates(4, 28)])
    pairs = method.classifier.pairs  # [B, 8, 2 + 2]: centre (row, col), neighbour (row, col)
    spec = method.spec
    direction = ((pairs[..., 2:] - pairs[..., :2]) / (spec.grid_patch + spec.grid_gap)).round()  # jitter < half a step
    assert torch.equal(direction, torch.tensor([LAYOUT[k] for k in range(8)]).float().expand(4, -1, -1))
    assert len(NEIGHBOURS) == 8 and 4 not in NEIGHBOURS
    assert out["location_acc"].numel() == 1 and out["loss"].item() == pytest.approx(torch.log(torch.tensor(8.0)))


def test_colour_dropping_keeps_one_channel_per_patch_and_replaces_the_others_by_faint_noise():
    torch.manual_seed(0)
    patches = torch.randn(16, 9, 3, 6, 6) * 2
    dropped = drop_colours(patches)
    kept = (dropped == patches).all(dim=(-2, -1))  # [16, 9, 3]
    assert torch.equal(kept.sum(-1), torch.ones(16, 9, dtype=torch.long))
    assert kept.float().mean(dim=(0, 1)).min() > 0.15, "every channel is kept for some patches"
    noise = dropped[~kept.unsqueeze(-1).unsqueeze(-1).expand_as(dropped)]
    assert 0.005 < noise.std() < 0.05  # 1/100 of the kept channel's std (2)


def test_colour_dropping_is_for_colour_data_only():
    assert build_method(resolved(28, 3), DataFacts(100, 3)).drop_colours
    assert not build_method(resolved(28, 1), DataFacts(100, 1)).drop_colours  # grayscale: no chromatic aberration
    assert not build_method(resolved(28, 3, colour_dropping=False), DataFacts(100, 3)).drop_colours


def test_the_exported_encoder_is_the_plain_backbone_on_whole_images():
    run = resolved(28)
    method = build_method(run, DataFacts(100, 1))
    assert method.exported_encoder() is method.backbone
    assert "method" not in type(method).encoder_info(run, DataFacts(100, 1))
    assert method.exported_encoder()(torch.randn(2, 3, 28, 28)).shape == (2, method.feature_dim)
