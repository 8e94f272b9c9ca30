"""contrastive: self-supervised representation learning for images, pretrain → evaluate → export.

The Python API (docs/api.md): `import contrastive_cli as contrastive`, then contrastive.pretrain, load_encoder, embed,
knn_eval, linear_probe; loaded on first use, so that `import contrastive_cli` stays light."""

__version__ = "0.1.0"

API = ("pretrain", "load_encoder", "embed", "knn_eval", "linear_probe", "build_spec", "Encoder")
__all__ = [*API, "UserError", "__version__"]


def __getattr__(name: str):
    if name in API:
        from . import api
        return getattr(api, name)
    if name == "UserError":
        from .errors import UserError
        return UserError
    raise AttributeError(f"module 'contrastive_cli' has no attribute {name!r}")
