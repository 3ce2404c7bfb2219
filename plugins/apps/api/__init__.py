"""An OpenAI-compatible HTTP API over an inference engine (`tuneforge api`)."""
