"""Settings come from the environment, tolerate emptiness, and name the variable that is wrong."""

from __future__ import annotations

import pytest

from chalicelib.settings import Settings

pytestmark = pytest.mark.unit


def test_empty_environment_gives_the_defaults() -> None:
    # `chalice package` imports the app with no deployed environment at all.
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.endpoint is None


def test_values_are_typed_from_their_defaults() -> None:
    settings = Settings.from_env(
        {"SEND_RATE_PER_S": "12.5", "MAX_RECEIVE_COUNT": "3", "SMTP_VERIFY_TLS": "false", "TABLE_PREFIX": "mp-prod"}
    )
    assert (settings.send_rate_per_s, settings.max_receive_count, settings.smtp_verify_tls) == (12.5, 3, False)
    assert settings.table_name("recipients") == "mp-prod-recipients"


def test_the_endpoint_and_region_come_from_the_aws_variables() -> None:
    settings = Settings.from_env({"AWS_ENDPOINT_URL": "http://localhost:4566", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert settings.endpoint == "http://localhost:4566"
    assert settings.region == "eu-west-1"


def test_a_malformed_number_names_its_variable() -> None:
    with pytest.raises(ValueError, match="MAX_RECEIVE_COUNT"):
        Settings.from_env({"MAX_RECEIVE_COUNT": "eight"})


def test_cognito_settings_are_read_and_the_jwks_timeout_is_a_number() -> None:
    settings = Settings.from_env(
        {
            "JWT_ALGORITHM": "RS256",
            "JWT_CLIENT_IDS": "client-a,client-b",
            "JWT_RESOURCE_SERVER": "https://api.mailpipe.example",
            "JWT_JWKS_TIMEOUT_S": "0.5",
        }
    )
    assert (settings.jwt_client_ids, settings.jwt_resource_server) == (
        "client-a,client-b",
        "https://api.mailpipe.example",
    )
    assert settings.jwt_jwks_timeout_s == 0.5
    assert Settings.from_env({"JWT_JWKS_TIMEOUT_S": ""}).jwt_jwks_timeout_s == Settings().jwt_jwks_timeout_s
