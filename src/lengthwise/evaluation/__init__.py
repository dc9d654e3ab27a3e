"""Length evaluation: a resumable grid runner over tasks/, a results store, and two backends."""
from .backends import HFRunner, LengthwiseRunner, make_runner
from .grid import EvalConfig, cells, run
from .store import ResultStore

__all__ = ["EvalConfig", "ResultStore", "run", "cells", "make_runner", "LengthwiseRunner", "HFRunner"]
