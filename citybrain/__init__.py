"""citybrain package."""
