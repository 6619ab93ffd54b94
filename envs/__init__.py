"""Tool-execution environments (imported as `rlvr.envs`). Imports neither torch nor Ray."""
