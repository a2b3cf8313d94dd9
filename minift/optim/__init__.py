"""Optimisation by hand: AdamW (`adamw.py`), global-norm clipping (`clip.py`) and learning-rate
schedules (`schedules.py`). Lessons: `lessons/08-adamw-and-clipping.md`, `lessons/09-schedules.md`."""

from minift.optim import schedules
from minift.optim.adamw import AdamW, param_groups
from minift.optim.clip import clip_grad_norm_
from minift.optim.schedules import make_scheduler

__all__ = ["AdamW", "clip_grad_norm_", "make_scheduler", "param_groups", "schedules"]
