"""Property-based tests of the API from its own OpenAPI schema (schemathesis): whatever a client sends
within or around the schema, no 5xx, and every answer matches what the schema documents."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from app.config import Settings
from app.main import create_app
from tests.conftest import MODELS_DIR

# Loaded at collection: schemathesis builds one test per operation from the schema, which the app
# serves once its lifespan (the real models) has started.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(Settings(model_dir=MODELS_DIR)))


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case) -> None:
    excluded = []
    if case.operation.method.upper() == "POST":
        # A schema cannot say "the bytes of a decodable JPEG or PNG", nor which modes have a model
        # loaded: schema-valid uploads are rightly refused (400/413/415/422).
        excluded.append(positive_data_acceptance)
    if case.operation.path == "/classify/batch":
        # A batch answers 200 with an error entry per bad file by design, and a "schema-violating"
        # file (null, a number) reaches the server as a file of bytes like any other.
        excluded.append(negative_data_rejection)
    case.call_and_validate(excluded_checks=excluded)
