"""minift: transformer fine-tuning from scratch in plain PyTorch.

Every module is paired with a lesson under lessons/. Submodules are imported explicitly
(``from minift.models import BertModel``) so that ``import minift`` stays cheap.
"""

__version__ = "0.1.0"
