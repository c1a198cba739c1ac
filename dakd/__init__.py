"""dakd: a reproduction of DA-KD, "Difficulty-Aware Knowledge Distillation for Efficient Large
Language Models" (He et al., ICML 2025, PMLR 267:22379-22391).

Modules follow the paper's parts: ``losses`` (BDL, Eq. 4, and the baselines' divergences),
``difficulty`` (DDS, Eq. 1), ``updater`` (selection ratio, Eq. 2, and Algorithm 1, DiffUp), then
``data``, ``models``, ``train`` and ``evaluate``.
"""

__version__ = "0.1.0"
