"""ctxlm: contextual language models and transfer learning in one PyTorch codebase."""

from ctxlm.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
