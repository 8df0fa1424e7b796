"""The model worker: loads models, runs the continuous-batching engine, serves the Redis queue.

Run it with ``python -m model_service`` (or ``pipeserve model-worker``).
"""
