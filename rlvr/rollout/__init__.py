"""Turning tasks into scored trajectories: chat formats, generation engines, the agent loop, rollout
workers and the rollout scheduling the RL loop reads from."""
