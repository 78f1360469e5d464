"""Generated protobuf and gRPC code of the `chorus.v1` contract (see proto/chorus/v1).

Do not edit: regenerate with `make proto`.
"""
