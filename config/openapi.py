"""OpenAPI: every operation documents the errors it can answer, in the one error format."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `not_found`.")
    message = serializers.CharField(help_text="Human-readable explanation.")
    details = serializers.JSONField(
        allow_null=True, help_text="Per-field errors or numbers behind the error; may be null."
    )


class ErrorResponseSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


def error_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorResponseSerializer, description=description)


class ErrorDocumentingAutoSchema(AutoSchema):
    def _error_responses(self) -> dict[str, OpenApiResponse]:
        errors = {"500": error_response("Internal error (`internal_error`).")}
        if self.view.get_authenticators():
            errors["401"] = error_response(
                "Missing, unknown or revoked API key, or inactive tenant "
                "(`not_authenticated`, `authentication_failed`)."
            )
        if self.method in ("POST", "PUT", "PATCH"):
            errors["400"] = error_response("Invalid input (`validation_error`, ...).")
            errors["415"] = error_response("Body is not JSON (`unsupported_media_type`).")
        if "{" in self.path:
            errors["404"] = error_response("No such object for this tenant (`not_found`).")
        return errors

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for status_code, response in self._error_responses().items():
            if status_code not in responses:
                responses[status_code] = self._get_response_for_code(
                    response, status_code, direction=direction
                )
        return responses
