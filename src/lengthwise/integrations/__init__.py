"""Adapters for tools that drive a model from outside: lm-evaluation-harness (`lengthwise.integrations.lm_eval`).

Each is an optional extra; importing the adapter imports its tool, never the other way round.
"""
