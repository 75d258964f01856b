"""The operations-centre web console: static files served by the API at ``/`` (see docs/console.md)."""
