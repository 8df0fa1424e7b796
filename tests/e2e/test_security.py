"""The real stack locked down: API keys, mutual TLS on the gateway, mutual TLS from gateway to tokenizer;
and no request can make a worker load anything the models file does not list."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls_certificates import TlsFiles, write_tls_files

from pipeserve.local_models import TINY_LLAMA
from pipeserve.v1 import generation_pb2, generation_pb2_grpc, models_pb2, models_pb2_grpc

from .conftest import RunningStack, free_port, start_stack, stop_stack, stream_request, unary_request

API_KEY = "e2e-key-6b1d0c"


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def locked_stack(models_file, redis_url, tmp_path_factory, tls) -> Iterator[tuple[RunningStack, str]]:
    """serve-all with every security setting on; yields the stack and its plaintext health address."""
    workdir = tmp_path_factory.mktemp("locked-stack")
    keys_file = workdir / "api-keys"
    keys_file.write_text(f"{API_KEY}\n")
    health = f"127.0.0.1:{free_port()}"
    env = {
        "PIPESERVE_API_KEYS_FILE": str(keys_file),
        "PIPESERVE_TLS_CERT_FILE": str(tls.server_cert),
        "PIPESERVE_TLS_KEY_FILE": str(tls.server_key),
        "PIPESERVE_TLS_CLIENT_CA_FILE": str(tls.ca),
        "PIPESERVE_GATEWAY_HEALTH_LISTEN": health,
        "PIPESERVE_TOKENIZER_TLS_CERT_FILE": str(tls.server_cert),
        "PIPESERVE_TOKENIZER_TLS_KEY_FILE": str(tls.server_key),
        "PIPESERVE_TOKENIZER_TLS_CLIENT_CA_FILE": str(tls.ca),
        "PIPESERVE_TOKENIZER_TLS_CA_FILE": str(tls.ca),
        "PIPESERVE_TOKENIZER_CLIENT_CERT_FILE": str(tls.client_cert),
        "PIPESERVE_TOKENIZER_CLIENT_KEY_FILE": str(tls.client_key),
    }
    stack = start_stack(models_file, redis_url, workdir, env=env)
    yield stack, health
    assert stop_stack(stack.process) == 0, stack.logs()


def secure_channel(stack: RunningStack, tls: TlsFiles, *, client_certificate: bool = True) -> grpc.Channel:
    read = Path.read_bytes
    if client_certificate:
        credentials = grpc.ssl_channel_credentials(read(tls.ca), read(tls.client_key), read(tls.client_cert))
    else:
        credentials = grpc.ssl_channel_credentials(read(tls.ca))
    return grpc.secure_channel(stack.gateway, credentials)


def test_the_locked_stack_generates_for_a_client_with_certificate_and_key(locked_stack, tls):
    """Gateway → tokenizer over mutual TLS too: Preprocess and StreamText both cross it."""
    stack, _health = locked_stack
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    with secure_channel(stack, tls) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = stream_request(max_new_tokens=4, ignore_eos=True)
        messages = list(stub.GenerateStream(request, metadata=metadata, timeout=60))
        tokens = models_pb2_grpc.ModelsServiceStub(channel).Tokenize(
            models_pb2.TokenizeRequest(model=TINY_LLAMA, prompt="hello"), metadata=metadata, timeout=30
        )
    assert sum(len(message.token_ids) for message in messages) == 4
    assert messages[-1].usage.completion_tokens == 4
    assert tokens.token_ids


def test_the_locked_stack_wants_a_key(locked_stack, tls):
    stack, _health = locked_stack
    with secure_channel(stack, tls) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer not-the-key"),)):
            with pytest.raises(grpc.RpcError) as raised:
                stub.Generate(unary_request(max_new_tokens=2), metadata=metadata, timeout=30)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_locked_stack_refuses_a_client_without_a_certificate(locked_stack, tls):
    stack, _health = locked_stack
    with secure_channel(stack, tls, client_certificate=False) as channel, pytest.raises(grpc.RpcError) as raised:
        generation_pb2_grpc.GenerationServiceStub(channel).Generate(
            unary_request(max_new_tokens=2), metadata=(("x-api-key", API_KEY),), timeout=30
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_probes_check_health_in_plaintext_without_a_key(locked_stack):
    _stack, health = locked_stack
    with grpc.insecure_channel(health) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_cli_generate_reaches_the_locked_stack(locked_stack, tls):
    stack, _health = locked_stack
    command = [
        str(Path(sys.executable).with_name("pipeserve")), "generate", "def main():",
        "--target", stack.gateway, "--max-new-tokens", "3",
        "--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PIPESERVE_API_KEY": API_KEY},
    )
    assert done.returncode == 0, done.stderr
    assert "3 completion" in done.stderr
    refused = subprocess.run([*command, "--api-key", "wrong"], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr and "--api-key" in refused.stderr


@pytest.mark.parametrize(
    "model",
    [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "gpt2",
        "/etc/passwd",
        "../tiny-llama",
        "./tiny-llama",
        "tiny-llama/",
        "TINY-LLAMA",
        "file:///tmp",
        "tiny-llama\x00",
        "tiny-llama; trust_remote_code=True",
    ],
)
def test_a_request_cannot_name_a_path_or_hub_id(stack, generation, models_api, tiny_llama_dir, model):
    """Only names from the models file are served; workers load only what it lists, with its trust_remote_code."""
    for call in (
        lambda: generation.Generate(unary_request(model=model, max_new_tokens=2), timeout=30),
        lambda: list(generation.GenerateStream(stream_request(model=model, max_new_tokens=2), timeout=30)),
        lambda: models_api.Tokenize(models_pb2.TokenizeRequest(model=model, prompt="hi"), timeout=30),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()
        assert "served models:" in raised.value.details() and TINY_LLAMA in raised.value.details()


def test_the_checkpoint_directory_itself_is_not_a_model_name(generation, tiny_llama_dir):
    with pytest.raises(grpc.RpcError) as raised:
        generation.Generate(unary_request(model=str(tiny_llama_dir), max_new_tokens=2), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_generation_parameters_have_no_field_that_reaches_model_loading():
    """The public request has no knob for code, revisions or paths: those live in the models file only."""
    fields = {field.name for field in generation_pb2.GenerationParameters.DESCRIPTOR.fields}
    fields |= {field.name for field in generation_pb2.GenerateRequest.DESCRIPTOR.fields}
    assert not fields & {"trust_remote_code", "revision", "path", "model_path", "code_revision", "device_map"}
