"""Config: reading, declared keys, validation."""
