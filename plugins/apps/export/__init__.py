"""`tuneforge export`: merge adapters into the base, save a self-contained model, verify it."""
