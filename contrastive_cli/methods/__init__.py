"""The method registry. A method is a pair of files in this folder, found by their names (there is no list to edit):

  <name>_spec.py  its pydantic spec (typed fields with descriptions), paper recipe and check; no torch, so that
                  `contrastive --help` stays fast
  <name>.py       its nn.Module (a subclass of base.Method): heads, loss, training step, and any hook it needs

SPECS is filled here by importing every *_spec module; base.method_class(name) finds the torch half.
"""

from __future__ import annotations

import importlib
import pkgutil

from .fields import MethodSpec


def _discover() -> dict[str, type[MethodSpec]]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.endswith("_spec"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        specs = [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, MethodSpec)
                 and obj.__module__ == module.__name__]
        if len(specs) != 1:
            raise ImportError(f"{module.__name__} must define exactly one MethodSpec subclass, found {len(specs)}")
        found.append((info.name.removesuffix("_spec"), specs[0]))
    found.sort(key=lambda item: (item[1].year, item[0]))  # the field's lineage, oldest first
    for module_name, spec in found:
        spec.module = module_name
    return {spec.method_name(): spec for _, spec in found}


SPECS: dict[str, type[MethodSpec]] = _discover()


__all__ = ["SPECS", "MethodSpec"]
