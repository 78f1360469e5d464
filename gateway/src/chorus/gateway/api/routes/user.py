"""Who the caller is and how the gateway authenticated them."""

from __future__ import annotations

from chorus.gateway import routing
from chorus.gateway.api.deps import CallerDep

router = routing.router("/user", ["user"])


@router.get("", summary="The caller")
async def get_user(caller: CallerDep) -> dict[str, str]:
    """`{user, authenticatedBy[, provider]}`: the identity every service sees for this caller
    and the auth mode that accepted it (`none`, `basic`, `apikey`, `easyauth`)."""
    out = {"user": caller.user, "authenticatedBy": caller.authenticated_by}
    if caller.provider:
        out["provider"] = caller.provider
    return out
