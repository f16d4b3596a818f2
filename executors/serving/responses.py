"""HTTP answers and their OpenAPI documentation, shared by the model server and the router.

Both parse their request bodies themselves (Seldon's JSON-labelled-as-a-form, OIP v2 tensors),
so FastAPI cannot see the bodies' schemas: `request_body_spec` and `install_openapi` document
them by hand. Error answers have one shape per protocol: Seldon's `status.reason` and OIP v2's
`error`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from executors.serving import oip, protocol
from executors.serving.protocol import ErrorResponse, SeldonMessage


def request_body_spec(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body we parse ourselves (JSON, or a form's `json=`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref},
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {"json": {"type": "string"}},
                        "required": ["json"],
                    }
                },
            },
        }
    }


def install_openapi(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Make `app.openapi()` include `models` in components (bodies documented by hand)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                generated = model.model_json_schema(
                    by_alias=True, ref_template="#/components/schemas/{model}"
                )
                for name, sub in generated.pop("$defs", {}).items():
                    components.setdefault(name, sub)
                components.setdefault(model.__name__, generated)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The request is not a valid message."},
    500: {"model": ErrorResponse, "description": "The model raised; the reason says why."},
}


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON answer (NaN and infinities refused: they are not JSON)."""
    return Response(
        json.dumps(body, allow_nan=False, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
    )


def error_response(status: int, reason: str) -> Response:
    """A JSON error answer with `status.reason`."""
    return JSONResponse(protocol.error_body(status, reason), status_code=status)


def v2_error_response(status: int, reason: str) -> Response:
    """An Open Inference Protocol v2 error answer (`{"error": reason}`)."""
    return JSONResponse(oip.error_body(reason), status_code=status)


V2_INFER_SPEC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
        },
    }
}
"""`openapi_extra` documenting an OIP v2 infer body (`InferenceRequest`)."""


def add_message_route(
    app: FastAPI,
    path: str,
    endpoint: Callable[..., Any],
    *,
    body: type[BaseModel],
    summary: str,
    answer: str | None = None,
    errors: dict[int | str, dict[str, Any]] | None = None,
    name: str | None = None,
) -> None:
    """A POST route for a Seldon-style message (`body`) that its endpoint parses itself.

    Documented with a `SeldonMessage` as the 200 (described by `answer`), then `errors`, then
    the 400 and 500 every such endpoint may give.
    """
    ok: dict[str, Any] = {"model": SeldonMessage}
    if answer is not None:
        ok["description"] = answer
    app.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        response_model=None,
        responses={200: ok, **(errors or {}), **ERROR_RESPONSES},
        openapi_extra=request_body_spec(body),
        summary=summary,
        name=name,
    )
