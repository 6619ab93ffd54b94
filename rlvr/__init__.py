"""rlvr: reinforcement learning from verifiable rewards for tool-using LLM agents.

Importing `rlvr` is cheap (no torch): the data contract and config are torch-free so that environment
and reward plugins can use them in a plain Python shell.
"""

from rlvr.rollout.chat import parse_tool_calls
from rlvr.core.config import Config, ConfigError, load_config
from rlvr.core.contract import Batch, Group, Task, ToolCall, ToolCallError, Trajectory

__version__ = "0.1.0"
__all__ = ["Batch", "Config", "ConfigError", "Group", "Task", "ToolCall", "ToolCallError", "Trajectory",
           "load_config", "parse_tool_calls"]
