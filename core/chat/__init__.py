"""Inference: generate replies with the planned model, template and adapter."""
