"""docs/openapi.json is the exported spec: it must match what the app serves."""

import json
from pathlib import Path

from currencyex.app import create_app
from currencyex.bootstrap import build
from currencyex.config import Settings

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_exported_spec_is_current(tmp_path):
    app = create_app(build(Settings(data_dir=tmp_path)), manage_lifecycle=False)
    assert json.loads(SPEC.read_text()) == json.loads(json.dumps(app.openapi())), (
        "docs/openapi.json is stale: run `currencyex export-openapi`"
    )


def test_spec_documents_the_error_shape_and_every_route():
    spec = json.loads(SPEC.read_text())
    assert "ErrorOut" in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    login = spec["paths"]["/v1/auth/login"]["post"]["responses"]
    assert login["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    for path in ("/v1/auth/register", "/v1/admin/staff", "/v1/admin/kyc/{user_id}/decision"):
        assert path in spec["paths"]


def test_spec_lets_kyc_status_be_null_for_staff():
    schemas = json.loads(SPEC.read_text())["components"]["schemas"]
    for model in ("UserOut", "StaffViewOut"):
        kyc = schemas[model]["properties"]["kyc_status"]
        assert {"type": "null"} in kyc["anyOf"], model
        assert "kyc_status" in schemas[model]["required"], model


def test_every_operation_lists_its_error_statuses_and_cursors_their_pattern():
    spec = json.loads(SPEC.read_text())
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"401", "403", "405", "413", "422", "429", "431", "500", "503"} <= set(
                responses
            ), (method, path)
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                assert "1011" in responses["400"]["description"], (method, path)
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "cursor":
                    patterns = [s.get("pattern") for s in parameter["schema"]["anyOf"]]
                    assert any(patterns), (method, path)
    quote = spec["components"]["schemas"]["QuoteIn"]
    assert quote["properties"]["source_currency"]["pattern"] == "^[A-Z]{3}$"
    assert quote["properties"]["source_amount"]["anyOf"][0]["pattern"]
