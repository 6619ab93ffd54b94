"""The stages around the RL loop, each a plain function behind a CLI command: synthesise demonstrations,
SFT, evaluate, export, and the quickstart that chains them."""
