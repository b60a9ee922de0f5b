"""The reference trainer (upper layer): config, models, checkpoints, the training loop, sampling,
export. The core (``antdiff/*.py``, :mod:`antdiff.mtl`, :mod:`antdiff.analysis`) never imports it.

Sub-modules are imported on use (``from antdiff.training.config import load_config``) so that
``import antdiff.training`` stays cheap.
"""
