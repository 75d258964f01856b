"""ingest.adapters.json package."""
