"""chorus.orchestrator — serves chorus.v1.RunService (see proto/chorus/v1/run_service.proto)."""
