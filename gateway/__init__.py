"""The public gRPC front door: validation, deadlines, cancellation and backpressure.

A request is checked here, preprocessed by the tokenizer service, enqueued on
its model's Redis stream, and its text is relayed from the tokenizer
service's StreamText back to the client. The gateway keeps no durable state.

- ``server``: assembles the grpc.aio server (health, reflection) and serves it.
- ``generation`` / ``models``: the servicers, thin over ``validation``,
  ``clients`` (the tokenizer service) and ``pipeserve.queue.producer``.
"""
