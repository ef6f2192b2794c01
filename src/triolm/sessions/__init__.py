"""Sessions: token-exact rollout records (nodes) for RL training, kept per client session."""
