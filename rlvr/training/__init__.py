"""Turning scored trajectories into weights: advantages, the algorithm registries, the learner, models
and LoRA adapters, attention, checkpoints."""
