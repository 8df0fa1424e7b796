"""The one-machine pipeserve stack: which processes, with what environment, ready when.

Start order: Redis (an embedded valkey-server unless a URL is given), the
tokenizer service, the model workers, the gateway. The supervisor stops them
in reverse, so the gateway drains its streams while the services behind it
still run, and Redis goes last. Every service is ``python -m <package>``
configured through its documented environment variables, exactly as a
Kubernetes Deployment runs it.

Test fixtures and scripts use it from Python::

    with Stack(Path("models/models.yaml"), gateway_listen="127.0.0.1:50061") as stack:
        channel = grpc.insecure_channel(stack.gateway_address)
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import ValidationError

from pipeserve.cli import defaults, probes
from pipeserve.cli.progress import say
from pipeserve.cli.services import service_argv
from pipeserve.cli.supervisor import ChildSpec, ReadinessCheck, ReadinessTimeout, Reporter, StopResult, Supervisor
from pipeserve.config import ModelSpec, load_models_file
from pipeserve.queue.keys import Keys
from pipeserve.tasks import MODEL_CLASSES

REDIS_READY_TIMEOUT_S = 15.0
CHILD_GRACE_FRACTION = 2 / 3
# A service's TLS certificate setting -> its plaintext health-only listen setting.
TLS_HEALTH_LISTENS = {
    "PIPESERVE_TOKENIZER_TLS_CERT_FILE": "PIPESERVE_TOKENIZER_HEALTH_LISTEN",
    "PIPESERVE_TLS_CERT_FILE": "PIPESERVE_GATEWAY_HEALTH_LISTEN",
}


class StackError(RuntimeError):
    """Something a person fixes before the stack can start: a missing models file, a busy port, no Redis."""


class Stack:
    """Starts the stack on ``start()`` (or entering ``with``) and stops every process on ``stop()`` (or leaving).

    ``redis_url=None`` starts an embedded valkey-server on a free port for the
    stack's lifetime. ``env`` is added to every child's environment (on top of
    this process's). ``stop_timeout_s`` is each stop stage's grace period
    before SIGKILL; the services' own drain periods (PIPESERVE_SHUTDOWN_GRACE_S,
    PIPESERVE_DRAIN_TIMEOUT_S) default to two thirds of it. A failed start
    stops whatever it had started before raising, so no process is left
    behind.

    Each model worker answers health checks on a free loopback port of its
    own (``worker_health_addresses``). Prometheus metrics are off unless
    ``metrics_port_base`` is given; then the gateway serves them on that port,
    the tokenizer on the next and model worker N on base + 1 + N
    (``metrics_addresses``). One PIPESERVE_METRICS_PORT for every child could
    only collide, so the environment's is not passed on.

    ``tokenizers`` > 1 starts more tokenizer services, on free ports of the
    tokenizer listen host (an IP address then), without metrics; the gateway
    balances over all of them. Tokenizers and model workers that exit once
    the stack is up are started again, as Kubernetes would restart their pods
    (the failure model says what happens to their requests meanwhile); the
    gateway or Redis exiting stops the stack.
    """

    def __init__(
        self,
        models_file: Path,
        *,
        gateway_listen: str = defaults.GATEWAY_LISTEN,
        tokenizer_listen: str = defaults.TOKENIZER_LISTEN,
        model_workers: int = 1,
        tokenizers: int = 1,
        redis_url: str | None = None,
        key_prefix: str = "pipeserve",
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = defaults.READY_TIMEOUT_S,
        stop_timeout_s: float = defaults.STOP_TIMEOUT_S,
        metrics_port_base: int | None = None,
    ):
        if model_workers < 0:
            raise StackError(f"model_workers must be 0 or more, got {model_workers}")
        if tokenizers < 1:
            raise StackError(f"tokenizers must be 1 or more, got {tokenizers}")
        self.models_file = Path(models_file).resolve()
        self.gateway_listen = gateway_listen
        self.tokenizer_listen = tokenizer_listen
        self.model_workers = model_workers
        self.tokenizers = tokenizers
        self._tokenizer_listens = [tokenizer_listen]
        self.key_prefix = key_prefix
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._given_redis_url = redis_url
        self._extra_env = dict(env or {})
        self._supervisor = Supervisor(stop_timeout_s=stop_timeout_s, say=say)
        self._redis_url: str | None = None
        self._redis_dir: tempfile.TemporaryDirectory | None = None
        self.models: dict[str, ModelSpec] = {}
        self.metrics_port_base = metrics_port_base
        self.metrics_addresses: dict[str, str] = {}
        """Child name -> where its /metrics is served (empty when metrics are off)."""
        self.worker_health_addresses: dict[str, str] = {}
        """model-worker-N -> its grpc.health.v1 address."""

    @property
    def gateway_address(self) -> str:
        """Where clients connect (``host:port``; a wildcard listen address becomes loopback)."""
        return connect_address(self.gateway_listen)

    @property
    def tokenizer_address(self) -> str:
        return connect_address(self.tokenizer_listen)

    @property
    def tokenizer_target(self) -> str:
        """The gateway's gRPC target: the tokenizer's address, or every tokenizer's as an ipv4:/ipv6: list."""
        if len(self._tokenizer_listens) == 1:
            return self.tokenizer_address
        addresses = [connect_address(listen) for listen in self._tokenizer_listens]
        host, _port = split_address(addresses[0])
        scheme = "ipv6" if ipaddress.ip_address(host).version == 6 else "ipv4"
        return f"{scheme}:{','.join(addresses)}"

    @property
    def redis_url(self) -> str:
        if self._redis_url is None:
            raise RuntimeError("the stack has not been started")
        return self._redis_url

    @property
    def embedded_redis(self) -> bool:
        return self._given_redis_url is None

    @property
    def pids(self) -> dict[str, int]:
        """Process id of every child started so far, by name (redis, tokenizer, model-worker-1, ..., gateway)."""
        return self._supervisor.pids

    def start(self, reporter: Reporter | None = None) -> Self:
        """Start every process and return once all are ready; raises StackError, ReadinessTimeout or ChildExited."""
        try:
            self._start(reporter)
        except BaseException:
            self.stop()
            raise
        return self

    def check(self) -> None:
        """Raise ChildExited if any process of the stack has exited."""
        self._supervisor.check()

    def wait(self) -> None:
        """Block while the stack runs; raises ChildExited when a process of it exits."""
        self._supervisor.wait()

    def stop(self) -> list[StopResult]:
        """Stop every process (gateway, workers, tokenizer, then Redis); safe to call more than once."""
        results = self._supervisor.stop()
        if self._redis_dir is not None:
            self._redis_dir.cleanup()
            self._redis_dir = None
        return results

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _start(self, reporter: Reporter | None) -> None:
        self.models = self._load_models()
        listens = {"gateway": self.gateway_listen, "tokenizer": self.tokenizer_listen}
        for service, listen in listens.items():
            ensure_bindable(listen, service)
        self._tokenizer_listens = self._more_tokenizer_listens()
        metrics_ports = self._metrics_ports()
        self._redis_url = self._given_redis_url or self._start_embedded_redis()
        redis_check = ReadinessCheck(
            "redis", f"Redis at {redact(self._redis_url)} answers PING", probes.redis_answers(self._redis_url)
        )
        try:
            self._supervisor.wait_ready([redis_check], REDIS_READY_TIMEOUT_S, reporter)
        except ReadinessTimeout:
            if self.embedded_redis:
                raise
            raise StackError(
                f"cannot reach Redis at {redact(self._redis_url)} within {REDIS_READY_TIMEOUT_S:g}s; "
                "start it, or give no Redis URL (no --redis-url, REDIS_URL unset) to use an embedded server"
            ) from None

        heartbeats_since = time.time() - 1.0
        env = self._service_env()
        tokenizer_envs = {}
        for number, listen in enumerate(self._tokenizer_listens, 1):
            name = "tokenizer" if number == 1 else f"tokenizer-{number}"
            tokenizer_envs[name] = self._child_env(env, name, metrics_ports)
            if number > 1:
                tokenizer_envs[name]["PIPESERVE_TOKENIZER_LISTEN"] = listen
                if env.get("PIPESERVE_TOKENIZER_HEALTH_LISTEN"):
                    tokenizer_envs[name]["PIPESERVE_TOKENIZER_HEALTH_LISTEN"] = f"127.0.0.1:{free_port()}"
            self._supervisor.start(
                ChildSpec(name, service_argv("tokenizer", []), tokenizer_envs[name], stage="tokenizers", restart=True)
            )
        for number in range(1, self.model_workers + 1):
            name = f"model-worker-{number}"
            worker_env = self._child_env(env, name, metrics_ports)
            self._supervisor.start(
                ChildSpec(name, service_argv("model-worker", []), worker_env, stage="model-workers", restart=True)
            )
        self._supervisor.start(
            ChildSpec("gateway", service_argv("gateway", []), self._child_env(env, "gateway", metrics_ports))
        )

        checks = [
            ReadinessCheck(
                name,
                f"{name} serving on {connect_address(child_env['PIPESERVE_TOKENIZER_LISTEN'])}",
                probes.grpc_serving(
                    health_address(
                        child_env,
                        "PIPESERVE_TOKENIZER_HEALTH_LISTEN",
                        connect_address(child_env["PIPESERVE_TOKENIZER_LISTEN"]),
                    )
                ),
            )
            for name, child_env in tokenizer_envs.items()
        ]
        keys = Keys(self.key_prefix)
        if self.model_workers:
            for model in models_served_by_workers(self.models, env.get("PIPESERVE_WORKER_MODELS")):
                plural = "s" if self.model_workers > 1 else ""
                checks.append(
                    ReadinessCheck(
                        f"{model} worker{plural}",
                        f"{self.model_workers} model worker{plural} serving {model}",
                        probes.workers_heartbeating(
                            self._redis_url, keys.workers(model), self.model_workers, heartbeats_since
                        ),
                    )
                )
        checks.append(
            ReadinessCheck(
                "gateway",
                f"gateway serving on {self.gateway_address}",
                probes.grpc_serving(health_address(env, "PIPESERVE_GATEWAY_HEALTH_LISTEN", self.gateway_address)),
            )
        )
        self._supervisor.wait_ready(checks, self.ready_timeout_s, reporter)

    def _more_tokenizer_listens(self) -> list[str]:
        """The tokenizer listen address, then a free port on its host for each further tokenizer."""
        if self.tokenizers == 1:
            return [self.tokenizer_listen]
        host, _port = split_address(self.tokenizer_listen)
        try:
            ipaddress.ip_address(host or "0.0.0.0")
        except ValueError:
            raise StackError(
                f"several tokenizers need an IP address to listen on (the gateway dials them all), "
                f"not {host!r}; use e.g. --tokenizer-listen 127.0.0.1:50052"
            ) from None
        bracketed = f"[{host}]" if ":" in host else host
        return [self.tokenizer_listen, *(f"{bracketed}:{free_port()}" for _ in range(self.tokenizers - 1))]

    def _metrics_ports(self) -> dict[str, int]:
        """Each child's metrics port (none when metrics are off), checked free before anything starts."""
        if self.metrics_port_base is None:
            return {}
        names = ["gateway", "tokenizer", *(f"model-worker-{n}" for n in range(1, self.model_workers + 1))]
        ports = {name: self.metrics_port_base + offset for offset, name in enumerate(names)}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise StackError(
                    f"metrics port {port} for the {name} is out of range; pick a lower --metrics-port-base"
                )
            try:
                ensure_bindable(f"0.0.0.0:{port}", f"{name} metrics")
            except StackError:
                raise StackError(
                    f"metrics port {port} for the {name} is taken (ports {min(ports.values())}-{max(ports.values())} "
                    "are needed); pick another --metrics-port-base"
                ) from None
        return ports

    def _child_env(self, env: dict[str, str], name: str, metrics_ports: dict[str, int]) -> dict[str, str]:
        """The stack's environment plus what is this child's alone: its metrics port (0: off), a worker's health port."""
        port = metrics_ports.get(name, 0)
        child = {**env, "PIPESERVE_METRICS_PORT": str(port)}
        if port:
            self.metrics_addresses[name] = f"127.0.0.1:{port}"
        if name.startswith("model-worker"):
            health = f"127.0.0.1:{free_port()}"
            self.worker_health_addresses[name] = child["PIPESERVE_WORKER_HEALTH_LISTEN"] = health
        return child

    def _load_models(self) -> dict[str, ModelSpec]:
        if not self.models_file.is_file():
            raise StackError(
                f"models file {self.models_file} does not exist; build the local models with "
                "`pipeserve build-models --out models` or point --models-file at yours"
            )
        try:
            return load_models_file(self.models_file)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise StackError(f"models file {self.models_file} is not valid: {exc}") from None

    def _start_embedded_redis(self) -> str:
        self._redis_dir = tempfile.TemporaryDirectory(prefix="pipeserve-valkey-")
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "pipeserve.cli.embedded_redis",
            "--port",
            str(port),
            "--data-dir",
            self._redis_dir.name,
        ]
        self._supervisor.start(ChildSpec("redis", argv))
        return f"redis://127.0.0.1:{port}/0"

    def _service_env(self) -> dict[str, str]:
        env = {**os.environ, **self._extra_env}
        # Each service drains in-flight work on SIGTERM for its own grace period; unless the
        # operator chose one, make it end well inside the supervisor's, so draining is never cut
        # short by SIGKILL.
        grace = f"{self.stop_timeout_s * CHILD_GRACE_FRACTION:g}"
        env.setdefault("PIPESERVE_SHUTDOWN_GRACE_S", grace)
        env.setdefault("PIPESERVE_DRAIN_TIMEOUT_S", grace)
        # The readiness probes speak plaintext: a service serving TLS answers them on a plaintext health port.
        for certificate, health_listen in TLS_HEALTH_LISTENS.items():
            if env.get(certificate) and not env.get(health_listen):
                env[health_listen] = f"127.0.0.1:{free_port()}"
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "PIPESERVE_KEY_PREFIX": self.key_prefix,
                "PIPESERVE_MODELS_FILE": str(self.models_file),
                "PIPESERVE_TOKENIZER_LISTEN": self.tokenizer_listen,
                "PIPESERVE_TOKENIZER_TARGET": self.tokenizer_target,
                "PIPESERVE_GATEWAY_LISTEN": self.gateway_listen,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env


def health_address(env: Mapping[str, str], health_listen: str, service_address: str) -> str:
    """Where a readiness probe checks a service's health: its plaintext health port if it has one."""
    return connect_address(env[health_listen]) if env.get(health_listen) else service_address


def models_served_by_workers(models: dict[str, ModelSpec], worker_models: str | None) -> list[str]:
    """The models whose heartbeats to wait for, as model_service chooses them.

    PIPESERVE_WORKER_MODELS (comma-separated) when set, else every model
    of a task model workers serve (one with a model class in pipeserve.tasks).
    """
    if worker_models and worker_models.strip():
        return [name.strip() for name in worker_models.split(",") if name.strip()]
    return [name for name, spec in models.items() if spec.task in MODEL_CLASSES]


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StackError(f"{address!r} is not a host:port address (e.g. 127.0.0.1:50051)")
    return host.strip("[]"), int(port)


def connect_address(listen: str) -> str:
    """The address a local client dials for a listen address: wildcards become loopback."""
    host, port = split_address(listen)
    if host in ("0.0.0.0", ""):
        return f"127.0.0.1:{port}"
    if host == "::":
        return f"[::1]:{port}"
    return listen


def ensure_bindable(listen: str, service: str) -> None:
    """Fail before starting anything when a listen port is taken.

    gRPC servers bind with SO_REUSEPORT, so a second server on a busy port
    would start "fine" and share the traffic; this bind has no such option
    and so sees the conflict.
    """
    host, port = split_address(listen)
    if not 0 < port < 65536:
        raise StackError(f"{service} listen address {listen}: the port must be between 1 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"cannot listen on {listen} for the {service} ({exc.strerror}); is another pipeserve running? "
                f"Stop it or pick another address with --{service}-listen"
            ) from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redact(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
