"""The optimisers under the name ``conf/optim/*.yaml`` and the saved configs of earlier runs give as their
``_target_`` (``selfsup.train.optim.OptimizerSpec``); they live in :mod:`selfsup.optim`, below ``train/``, where
``selfsup-reduce`` builds its LARS schedule from them too."""

from selfsup.optim import LARS, OptimizerSpec, StepSchedule, WarmupCosine, WeightDecaySchedule, warmup_cosine

__all__ = ["LARS", "OptimizerSpec", "StepSchedule", "WarmupCosine", "WeightDecaySchedule", "warmup_cosine"]
