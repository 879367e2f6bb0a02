from selfsup.models.backbones import SmallCNN, build_backbone
from selfsup.models.heads import DINOHead, dino_head, mlp

__all__ = ["DINOHead", "SmallCNN", "build_backbone", "dino_head", "mlp"]
