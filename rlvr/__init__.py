"""rlvr: reinforcement learning from verifiable rewards for tool-using LLM agents.

Importing `rlvr` is cheap (no torch): the data contract and config are torch-free so that environment
and reward plugins can use them in a plain Python shell.
"""

import logging

from rlvr.rollout.chat import parse_tool_calls
from rlvr.core.config import Config, ConfigError, load_config
from rlvr.core.contract import Batch, Group, Task, ToolCall, ToolCallError, Trajectory

# bitsandbytes (the qlora extra) warns at import on CPUs with AVX512-BF16 that it cannot fetch an optional
# kernel from the hub; rlvr turns that CPU path off under the learner (rlvr/training/models.py), so it is noise
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
__all__ = ["Batch", "Config", "ConfigError", "Group", "Task", "ToolCall", "ToolCallError", "Trajectory",
           "load_config", "parse_tool_calls"]
