"""Every ``conf/objective/*.yaml`` instantiates, is named after its class, and mirrors the constructor."""

import inspect
import pathlib

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import selfsup.objectives as objectives

CONF = pathlib.Path(__file__).resolve().parents[2] / "conf" / "objective"
CONFIGS = sorted(CONF.glob("*.yaml"))
# file stem -> class (stem = snake_case of the class minus "Loss"; "care" is the composite InfoNCE + CARE term)
EXPECTED = {
    "info_nce": "InfoNCELoss",
    "debiased_info_nce": "DebiasedInfoNCELoss",
    "barlow_twins": "BarlowTwinsLoss",
    "vicreg": "VICRegLoss",
    "care": "CompositeObjective",
    "sie": "SIELoss",
    "intl": "INTLLoss",
    "ldreg": "LDRegLoss",
    "dino": "DINOLoss",
    "swav": "SwAVLoss",
    "mae": "MAELoss",
    "ijepa": "IJEPALoss",
    "data2vec": "Data2VecLoss",
    "dinov2": "CompositeObjective",
}


def test_expected_configs_exist():
    assert set(EXPECTED) <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_instantiates_and_mirrors_constructor(path):
    cfg = OmegaConf.load(path)
    # care.yaml reads its chunk count from the views config it runs with (views=care: 16), dino.yaml its width
    # from the projector, mae.yaml its patch size from the backbone
    context = {"views": {"shared_chunks": 16}, "projector": {"out_dim": 64}, "backbone": {"patch_size": 4}}
    cfg = OmegaConf.create({**context, "objective": cfg}).objective
    objective = instantiate(cfg)
    cls = get_class(cfg._target_)
    assert type(objective) is cls and cls is getattr(objectives, cls.__name__)
    if path.stem in EXPECTED:
        assert cls.__name__ == EXPECTED[path.stem]
    if cls is objectives.CompositeObjective:
        # a composite config is named after the term that defines it, or after the paper that composes them (DINOv2:
        # DINO + iBOT + KoLeo)
        assert path.stem in cfg.terms or path.stem == "dinov2"
        return
    params = inspect.signature(cls.__init__).parameters
    assert set(cfg) - {"_target_"} <= set(params), "every YAML key is a constructor argument"
    for key, value in cfg.items():
        if key != "_target_":
            assert getattr(objective, key) == value
