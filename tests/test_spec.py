"""Spec validation: bad values are rejected before any work with one readable line per problem."""

import pytest

from contrastive_cli.errors import SpecError
from contrastive_cli.flags import collect, merge
from contrastive_cli.spec import KnnSpec, LinearProbeSpec, PretrainSpec, resolve_pretrain, validate


def flags_of(**values):
    by_flag = {f.flag: f for f in collect(PretrainSpec)}
    return {by_flag[k]: v for k, v in values.items()}


def problems(**values):
    with pytest.raises(SpecError) as err:
        merge(PretrainSpec, {}, flags_of(**values))
    return err.value.problems


def test_defaults_are_valid_and_resolve_from_the_recipe():
    spec = resolve_pretrain(PretrainSpec(), 32, 5000)
    assert spec.method.name == "mocov2" and spec.method.queue_size == 4096 and spec.method.temperature == 0.1
    assert spec.optim.lr == 0.03 and spec.augment.crop_scale == (0.08, 1.0)
    big = resolve_pretrain(PretrainSpec(), 224, 100_000)
    assert big.method.queue_size == 65536 and big.method.momentum == 0.999 and big.method.temperature == 0.2


@pytest.mark.parametrize("values, needle", [
    ({"--method": "no-such-method"}, "method"),
    ({"--lr": -1.0}, "--lr"),
    ({"--batch-size": 1}, "--batch-size"),
    ({"--method": "simclr", "--temperature": 0.0}, "--temperature"),
    ({"--crop-scale": (0.9, 0.2)}, "crop_scale"),
    ({"--gray-p": 1.5}, "--gray-p"),
    ({"--device": "tpu"}, "--device"),
])
def test_invalid_values_are_named(values, needle):
    lines = problems(**values)
    assert any(needle in line for line in lines), lines


def test_every_problem_is_reported_at_once():
    assert len(problems(**{"--lr": -1.0, "--epochs": 0, "--gray-p": 2.0})) == 3


def test_flag_for_another_method_is_rejected():
    lines = problems(**{"--method": "simclr", "--queue-size": 4096})
    assert len(lines) == 1 and lines[0].startswith("--queue-size does not apply to method simclr (it is used by ")
    assert "mocov2" in lines[0]


def test_flags_override_config_file_values():
    spec = merge(PretrainSpec, {"method": {"name": "simclr", "temperature": 0.2}, "optim": {"lr": 0.1}},
                 flags_of(**{"--lr": 0.5}))
    assert spec.method.temperature == 0.2 and spec.optim.lr == 0.5


def test_unknown_config_keys_are_rejected():
    with pytest.raises(SpecError) as err:
        validate(PretrainSpec, {"optim": {"learning_rate": 0.1}})
    assert "optim.learning_rate" in err.value.problems[0]


def test_queue_larger_than_the_dataset_is_rejected_after_resolution():
    with pytest.raises(SpecError) as err:
        resolve_pretrain(PretrainSpec(), 32, 1000)
    assert "larger than the dataset" in err.value.problems[0]


def test_eval_specs_have_the_protocol_defaults():
    probe = LinearProbeSpec(checkpoint="x.safetensors")
    assert (probe.optim.lr, probe.optim.weight_decay, probe.optim.schedule, probe.optim.milestones) == (30.0, 0.0, "step", (0.6, 0.8))
    knn = KnnSpec(checkpoint="x.safetensors")
    assert knn.k == [200] and knn.temperature == 0.1


def test_every_flag_has_help_text():
    for model in (PretrainSpec, KnnSpec, LinearProbeSpec):
        for f in collect(model, skip=("kind", "checkpoint")):
            assert f.help, f.flag


def test_reference_docs_are_generated_from_the_specs():
    from contrastive_cli.docs import reference
    from pathlib import Path
    target = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
    assert target.read_text() == reference(), "docs/reference.md is stale: run python -m contrastive_cli.docs"


def test_recipe_warmup_takes_at_most_a_tenth_of_a_short_run():
    spec = PretrainSpec.model_validate({"method": {"name": "simclr"}, "optim": {"epochs": 20}})
    assert resolve_pretrain(spec, 32, 5000).optim.warmup_epochs == 2
    spec = PretrainSpec.model_validate({"method": {"name": "simclr"}, "optim": {"epochs": 200}})
    assert resolve_pretrain(spec, 32, 5000).optim.warmup_epochs == 10


def test_example_configs_are_valid_specs():
    from pathlib import Path
    from contrastive_cli.flags import load_config
    examples = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        merge(PretrainSpec, load_config(path), {})
