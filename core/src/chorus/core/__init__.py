"""The runtime every Chorus gRPC service shares.

Modules, one job each:

* `settings` — `CoreSettings`, the `CHORUS_`-prefixed configuration every service extends.
* `logging` — structlog JSON logs with request id, user and run id bound from context.
* `identity` — who is calling (`Identity`), read from gRPC metadata by the interceptor.
* `errors` — exceptions that become `google.rpc.Status` with `ErrorInfo` / `BadRequest`.
* `interceptors` — server interceptors: identity, request id, errors, Prometheus metrics.
* `server` — `GrpcServer`: grpc.aio server with health, reflection and graceful shutdown.
* `channels` — `ChannelPool`: one channel per target, forwarding identity and deadlines.
* `timestamps` — protobuf Timestamp helpers.
"""
