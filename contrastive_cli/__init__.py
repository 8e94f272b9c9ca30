"""contrastive: self-supervised representation learning for images, pretrain → evaluate → export."""

__version__ = "0.1.0"
