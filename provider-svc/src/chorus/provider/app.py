"""Builds provider-svc in process: catalog, backends, retry loop and the ProviderService binding.

Other services' tests run it in their own event loop::

    app = await build_app(Settings(dev_mode=True))
    server = GrpcServer(app.bindings, app.settings, 0)
    await server.start()
    ...
    await server.stop(0)
    await app.close()

`app.simulator.received` and `app.simulator.active_streams` let such tests look inside.
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus.core.logging import get_logger
from chorus.core.server import ServiceBinding
from chorus.provider.backends.registry import Backends
from chorus.provider.backends.simulator import Simulator
from chorus.provider.models import Catalog
from chorus.provider.retry import Retrier
from chorus.provider.servicer import ProviderServicer
from chorus.provider.settings import Settings
from chorus.v1 import provider_service_pb2_grpc

log = get_logger("chorus.provider.app")

SERVICE_NAME = "chorus.v1.ProviderService"


@dataclass
class ProviderApp:
    """A built provider-svc.

    Attributes:
        settings: the settings it was built from.
        catalog: configured providers and models.
        bindings: the ProviderService binding, for `chorus.core.server.GrpcServer`.
        simulator: the simulator backend (`received`, `active_streams`).
        retrier: the retry loop (its `cooldowns` can be inspected).
    """

    settings: Settings
    catalog: Catalog
    bindings: list[ServiceBinding]
    simulator: Simulator
    retrier: Retrier
    _backends: Backends

    async def close(self) -> None:
        """Close the upstream HTTP clients (after the server stopped)."""
        await self._backends.aclose()


async def build_app(settings: Settings) -> ProviderApp:
    """Build provider-svc from `settings`.

    Raises:
        chorus.core.settings.ConfigurationError: unusable models file or defaults.
    """
    catalog = Catalog.from_settings(settings)
    backends = Backends(settings)
    retrier = Retrier(settings, backends)
    servicer = ProviderServicer(settings, catalog, retrier)
    binding = ServiceBinding(
        SERVICE_NAME, servicer, provider_service_pb2_grpc.add_ProviderServiceServicer_to_server
    )
    log.info(
        "providers_configured",
        default_provider=catalog.default_provider,
        providers={name: p.credentials_present for name, p in sorted(catalog.providers.items())},
    )
    return ProviderApp(
        settings=settings,
        catalog=catalog,
        bindings=[binding],
        simulator=backends.simulator,
        retrier=retrier,
        _backends=backends,
    )
