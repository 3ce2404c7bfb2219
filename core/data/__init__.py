"""The data pipeline: dataset registry, loading, conversion, rendering and tokenisation."""
