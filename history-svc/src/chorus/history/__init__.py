"""chorus.history — serves chorus.v1.HistoryService (see proto/chorus/v1/history_service.proto)."""
