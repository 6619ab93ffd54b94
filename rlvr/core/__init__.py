"""The torch-free floor: the data contract, config, plugin loading, task sources, tool schemas and the
protocols of the loop's hand-offs. Envs and rewards import only this (and each other)."""
