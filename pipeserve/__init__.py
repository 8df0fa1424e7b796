"""pipeserve's shared package: what the gateway, tokenizer and model services all import.

- ``config``: settings read once at start-up (environment + models file).
- ``errors``: domain exceptions and their one mapping to gRPC status codes.
- ``queue``: the Redis request-queue protocol (keys, payloads, both ends).
- ``v1`` / ``internal.v1``: generated protobuf and gRPC stubs (scripts/gen_protos.py).
"""

__version__ = "0.1.0"
