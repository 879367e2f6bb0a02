"""Objectives: one ``nn.Module`` per file, ``forward(z_a, z_b, **extras) -> 0-dim Tensor`` (docs/api.md)."""

from selfsup.objectives.barlow_twins import BarlowTwinsLoss
from selfsup.objectives.base import Objective, RunFacts, ViewBatch, call_objective
from selfsup.objectives.care import CAREEquivarianceLoss
from selfsup.objectives.composite import CompositeObjective
from selfsup.objectives.data2vec import Data2VecLoss
from selfsup.objectives.debiased_info_nce import DebiasedInfoNCELoss
from selfsup.objectives.diet import DIETLoss
from selfsup.objectives.dino import DINOLoss
from selfsup.objectives.e2mc import E2MCLoss
from selfsup.objectives.ibot import IBOTPatchLoss
from selfsup.objectives.ijepa import IJEPALoss
from selfsup.objectives.info_nce import InfoNCELoss
from selfsup.objectives.intl import INTLLoss
from selfsup.objectives.koleo import KoLeoLoss
from selfsup.objectives.ldreg import LDRegLoss
from selfsup.objectives.mae import MAELoss
from selfsup.objectives.negative_cosine import NegativeCosineLoss
from selfsup.objectives.pirl import PIRLLoss
from selfsup.objectives.rotation import RotationPrediction
from selfsup.objectives.sie import SIELoss
from selfsup.objectives.swav import SwAVLoss
from selfsup.objectives.vicreg import VICRegLoss

__all__ = [
    "BarlowTwinsLoss",
    "call_objective",
    "CAREEquivarianceLoss",
    "CompositeObjective",
    "Data2VecLoss",
    "DebiasedInfoNCELoss",
    "DIETLoss",
    "DINOLoss",
    "E2MCLoss",
    "IBOTPatchLoss",
    "IJEPALoss",
    "InfoNCELoss",
    "INTLLoss",
    "KoLeoLoss",
    "LDRegLoss",
    "MAELoss",
    "NegativeCosineLoss",
    "PIRLLoss",
    "RotationPrediction",
    "Objective",
    "RunFacts",
    "SIELoss",
    "SwAVLoss",
    "VICRegLoss",
    "ViewBatch",
]
