"""One `APIRouter` per resource, mounted under `/api/v1` (health and metrics at the root)."""
