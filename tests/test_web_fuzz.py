"""Schemathesis over the admin API's OpenAPI document, in-process (WSGI), with a bounded number of examples per
route: no 5xx, and every response matches the document."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from app.store.migrate import apply_migrations
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api_schema(app, database_url):
    apply_migrations(database_url)
    return schemathesis.openapi.from_wsgi("/api/admin/openapi.json", app, headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_no_server_error_and_every_response_matches_the_document(case):
    case.call_and_validate(
        headers=AUTH, checks=[not_a_server_error, response_schema_conformance, content_type_conformance]
    )
