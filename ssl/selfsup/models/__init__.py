from selfsup.models.backbones import SmallCNN, build_backbone
from selfsup.models.heads import mlp

__all__ = ["SmallCNN", "build_backbone", "mlp"]
