"""streams.agents package."""
