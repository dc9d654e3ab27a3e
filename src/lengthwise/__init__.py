"""lengthwise: padding-free transformers at every sequence length."""
from . import attention, kv, positions, report
from .errors import LengthwiseError
from .evaluation import evaluate
from .pipeline import CausalLM, Encoder, from_hf, load
from .ragged import RaggedBatch

__version__ = "0.1.0"
__all__ = ["load", "from_hf", "evaluate", "report", "CausalLM", "Encoder", "RaggedBatch", "LengthwiseError", "positions", "attention", "kv"]
