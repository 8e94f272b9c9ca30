"""Method registry: one file per method; add a method by adding its file, its spec class and a line here."""

from .base import Method
from .byol import BYOL
from .mocov2 import MoCoV2
from .simclr import SimCLR
from .simsiam import SimSiam

METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR, MoCoV2, BYOL, SimSiam)}

__all__ = ["METHODS", "Method"]
