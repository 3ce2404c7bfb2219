"""Reward functions for the RL stages (grpo, ppo): built-in reward-function plugins."""
