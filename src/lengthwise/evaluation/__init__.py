"""Length evaluation: a resumable grid runner over tasks/, a results store, two runners and the protocol for more."""
from .api import evaluate
from .backends import HFRunner, LengthwiseRunner, make_render, make_runner
from .grid import EvalConfig, cells, run
from .store import ResultStore

__all__ = ["evaluate", "make_render", "EvalConfig", "ResultStore", "run", "cells", "make_runner", "LengthwiseRunner", "HFRunner"]
