"""Each method recipe builds its paper's heads: the layers of the projector and predictor, in order (the widths are
the recipe's, often solo-learn's CIFAR ones). The CIFAR-10 side by side with lightly found NNCLR's recipe with two
projector layers where the paper has three (docs/evidence.md, NNCLR on CIFAR-10)."""

from pathlib import Path

import hydra
import pytest
from torch import nn

from tests.config_utils import compose_train

# recipe → (projector, predictor): "L" a linear layer, "BN" BatchNorm1d, "ReLU"; None: no predictor
PAPER_HEADS = {
    # Chen et al. 2020 (arXiv:2002.05709) §2.1: one hidden layer; google-research/simclr: BN in it
    "simclr": ("L BN ReLU L", None),
    # Grill et al. 2020 (arXiv:2006.07733) §3.3: linear, BN, ReLU, linear — projector and predictor alike
    "byol": ("L BN ReLU L", "L BN ReLU L"),
    # Chen & He 2021 (arXiv:2011.10566) §3, baseline settings: 3 layers, BN on each, the output's too; a 2-layer
    # bottleneck predictor
    "simsiam": ("L BN ReLU L BN ReLU L BN", "L BN ReLU L"),
    # Zbontar et al. 2021 (arXiv:2103.03230), implementation details: 3 linear layers, BN and ReLU after the first two
    "barlow_twins": ("L BN ReLU L BN ReLU L", None),
    # Bardes et al. 2022 (arXiv:2105.04906), implementation details: the same expander
    "vicreg": ("L BN ReLU L BN ReLU L", None),
    # Chen et al. 2020 (arXiv:2003.04297): a 2-layer MLP head, no BN (facebookresearch/moco --mlp)
    "mocov2": ("L ReLU L", None),
    # Chen, Xie & He 2021 (arXiv:2104.02057), facebookresearch/moco-v3 moco/builder.py: 3-layer projector with BN on
    # every layer, 2-layer predictor
    "mocov3": ("L BN ReLU L BN ReLU L BN", "L BN ReLU L"),
    # Dwibedi et al. 2021 (arXiv:2104.14548), implementation details: 3 layers [2048, 2048, d], each followed by BN;
    # predictor [4096, d], BN and ReLU after the hidden layer
    "nnclr": ("L BN ReLU L BN ReLU L BN", "L BN ReLU L"),
    # Caron et al. 2020 (arXiv:2006.09882), facebookresearch/swav resnet50.py: linear, BN, ReLU, linear
    "swav": ("L BN ReLU L", None),
}


def layout(head: nn.Module) -> str:
    names = {nn.Linear: "L", nn.BatchNorm1d: "BN", nn.ReLU: "ReLU"}
    return " ".join(names[type(m)] for m in head.modules() if type(m) in names)


@pytest.mark.parametrize("method", sorted(PAPER_HEADS))
def test_each_method_recipe_builds_its_papers_heads(method, tmp_path: Path):
    cfg = compose_train([f"recipes=cifar10/{method}"], tmp_path)
    projector, predictor = PAPER_HEADS[method]
    assert layout(hydra.utils.instantiate(cfg.projector)(in_dim=8)) == projector, f"{method} projector"
    if predictor is None:
        assert cfg.get("predictor") is None, f"{method}: a predictor the paper does not have"
    else:
        out = int(cfg.projector.out_dim)
        assert layout(hydra.utils.instantiate(cfg.predictor)(in_dim=out)) == predictor, f"{method} predictor"
