"""Verifiable reward functions and per-call credit (imported as `rlvr.rewards`). Imports neither torch nor Ray."""
