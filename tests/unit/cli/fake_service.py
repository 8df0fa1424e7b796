"""A stand-in for the gateway, tokenizer service and model worker, so the stack's process handling is tested in seconds.

Run as ``python fake_service.py ROLE`` with the environment the stack gives a
real service. The gateway and tokenizer serve grpc.health.v1 on their listen
address; a model worker writes heartbeats for every model in the models
file. Behaviour for a test comes from the environment:

- FAKE_DIR=DIR (required): every service writes DIR/<role>-<pid>.json with
  the environment it got, appends "<role>" to DIR/stopped when SIGTERM
  arrives, and exits with code N as soon as a file DIR/exit-<role> holds N
  (removing it, so that a restarted one runs on).
- FAKE_NEVER_READY=ROLE: that role never becomes ready.
- FAKE_IGNORE_SIGTERM=ROLE: that role ignores SIGTERM and starts a grandchild
  (which must go with its process group); its pid is in DIR/grandchild.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV_RECORDED = [
    "REDIS_URL",
    "PIPESERVE_KEY_PREFIX",
    "PIPESERVE_MODELS_FILE",
    "PIPESERVE_TOKENIZER_LISTEN",
    "PIPESERVE_TOKENIZER_TARGET",
    "PIPESERVE_GATEWAY_LISTEN",
    "PIPESERVE_SHUTDOWN_GRACE_S",
    "PIPESERVE_DRAIN_TIMEOUT_S",
    "PIPESERVE_METRICS_PORT",
    "PIPESERVE_WORKER_HEALTH_LISTEN",
    "FAKE_EXTRA",
]


def main(role: str) -> int:
    record_dir = Path(os.environ["FAKE_DIR"])
    env = {name: os.environ.get(name) for name in ENV_RECORDED}
    (record_dir / f"{role}-{os.getpid()}.json").write_text(json.dumps(env))
    ignore_sigterm = os.environ.get("FAKE_IGNORE_SIGTERM") == role

    def on_sigterm(_signum, _frame):
        with open(record_dir / "stopped", "a") as stopped:
            stopped.write(role + "\n")
        if not ignore_sigterm:
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    if ignore_sigterm:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (record_dir / "grandchild").write_text(str(grandchild.pid))

    ready = os.environ.get("FAKE_NEVER_READY") != role
    if role in ("gateway", "tokenizer"):
        from concurrent import futures

        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        listen = os.environ[f"PIPESERVE_{role.upper()}_LISTEN"]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        servicer.set("", status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(listen)
        server.start()
        beat = None
    else:
        import redis
        import yaml

        from pipeserve.queue.keys import Keys

        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        keys = Keys(os.environ["PIPESERVE_KEY_PREFIX"])
        models = [m["name"] for m in yaml.safe_load(Path(os.environ["PIPESERVE_MODELS_FILE"]).read_text())["models"]]

        def beat():
            for model in models:
                client.zadd(keys.workers(model), {f"fake-{os.getpid()}": time.time()})

    exit_file = record_dir / f"exit-{role}"
    while not exit_file.exists():
        if ready and beat:
            beat()
        time.sleep(0.1)
    code = int(exit_file.read_text())
    exit_file.unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
