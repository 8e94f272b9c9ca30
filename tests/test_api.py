"""The Python API: the examples of docs/api.md run as written, in order, in an empty folder; and its options are the
command's flags, validated by the same spec."""

import re
from pathlib import Path

import pytest

import contrastive_cli as contrastive

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_the_examples_in_docs_api_run(in_tmp):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 8
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["knn"]["results"][0]["top1"] > 0


def test_keywords_are_the_flags_and_override_the_spec(in_tmp):
    from contrastive_cli.spec import PretrainSpec
    spec = contrastive.build_spec(PretrainSpec, {"optim": {"batch_size": 32, "lr": 0.5}},
                                  {"lr": 0.1, "method": "byol", "seed": None})
    assert (spec.optim.batch_size, spec.optim.lr, spec.method.name, spec.runtime.seed) == (32, 0.1, "byol", 0)
    with pytest.raises(contrastive.UserError, match="did you mean batch_size"):
        contrastive.pretrain(bach_size=64)
    with pytest.raises(contrastive.UserError, match="Invalid run spec"):
        contrastive.pretrain(batch_size=-1)
