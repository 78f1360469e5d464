"""chorus.provider — serves chorus.v1.ProviderService (see proto/chorus/v1/provider_service.proto)."""
