"""HTTP route modules; each exposes ``build(ctx) -> APIRouter``."""
