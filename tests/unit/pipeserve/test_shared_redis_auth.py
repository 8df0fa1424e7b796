"""Redis AUTH and TLS reach every client through the URL; the password may come from a file instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio.connection import SSLConnection

from pipeserve.config import CommonSettings
from pipeserve.queue.connection import async_client, sync_client

PASSWORD = "p@ss:w/rd%"


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "redis-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.mark.parametrize(
    ("url", "username"),
    [
        ("redis://redis:6379/0", None),
        ("rediss://pipeserve@redis:6380/1?ssl_ca_certs=/etc/redis-ca/ca.pem", "pipeserve"),
    ],
)
def test_the_password_file_fills_in_the_url(password_file, url, username):
    settings = CommonSettings(redis_url=url, redis_password_file=password_file)
    options = async_client(settings.redis_url).connection_pool.connection_kwargs
    assert options["password"] == PASSWORD and options.get("username") == username
    assert sync_client(settings.redis_url).connection_pool.connection_kwargs["password"] == PASSWORD


def test_rediss_urls_give_tls_connections_with_their_options():
    client = async_client("rediss://:secret@redis:6380/0?ssl_ca_certs=/etc/redis-ca/ca.pem&ssl_cert_reqs=required")
    assert client.connection_pool.connection_class is SSLConnection
    options = client.connection_pool.connection_kwargs
    assert options["ssl_ca_certs"] == "/etc/redis-ca/ca.pem" and options["password"] == "secret"


def test_the_same_password_in_both_places_is_accepted(password_file):
    url = "redis://:p%40ss%3Aw%2Frd%25@redis:6379/0"
    assert CommonSettings(redis_url=url, redis_password_file=password_file).redis_url == url


def test_two_different_passwords_are_refused_without_printing_either(password_file):
    with pytest.raises(ValidationError) as raised:
        CommonSettings(redis_url="redis://:other-secret@redis:6379/0", redis_password_file=password_file)
    assert "give only one" in str(raised.value)
    assert "other-secret" not in str(raised.value) and PASSWORD not in str(raised.value)


def test_an_unreadable_password_file_is_named(tmp_path):
    with pytest.raises(ValidationError, match="PIPESERVE_REDIS_PASSWORD_FILE=.*cannot read it"):
        CommonSettings(redis_password_file=tmp_path / "missing")
