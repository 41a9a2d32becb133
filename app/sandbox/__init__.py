"""Running one script: a locked-down single-use container, its agent, the warm pool and per-run limits."""
