"""Optional extras: features that need a package the core install leaves out import it through `require`, which
turns a missing package into one paragraph naming the `pip install 'contrastive[extra]'` that brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError


def install_command(extra: str) -> str:
    return f"pip install 'contrastive[{extra}]'"


def require(module: str, extra: str, feature: str, alternative: str = "") -> ModuleType:
    """Import `module` (e.g. 'timm', 'matplotlib.pyplot') for `feature`, or raise a UserError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = err.name or module.split(".")[0]
        fix = f"install the '{extra}' extra: {install_command(extra)}" + (f", or {alternative}" if alternative else "")
        raise UserError(f"{feature} needs the Python package '{missing}', which is not installed", fix) from None
