"""ingest.adapters package."""
