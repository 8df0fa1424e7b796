"""Every Redis key name pipeserve uses, built here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "model-workers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "pipeserve"

    def request_stream(self, model: str) -> str:
        """Work items for one model; model workers read it through CONSUMER_GROUP."""
        return f"{self.prefix}:requests:{model}"

    def reply_stream(self, request_id: str) -> str:
        """ReplyChunks of one request, in order; expires with the request."""
        return f"{self.prefix}:reply:{request_id}"

    def cancel(self, request_id: str) -> str:
        """Set of cancelled sequence indexes of one request (ALL_SEQUENCES = every one)."""
        return f"{self.prefix}:cancel:{request_id}"

    def workers(self, model: str) -> str:
        """Sorted set: worker id -> last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers:{model}"

    def dead_letter(self, model: str) -> str:
        """Work items of one model that took down max_deliveries workers, with why; capped, not per request."""
        return f"{self.prefix}:dead-letter:{model}"
