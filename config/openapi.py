"""OpenAPI: every operation documents the errors it can answer, in the one error format."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import generics, serializers


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


def _is_serializer(parameter: object) -> bool:
    return isinstance(parameter, serializers.Serializer) or (
        isinstance(parameter, type) and issubclass(parameter, serializers.Serializer)
    )


class ErrorDocumentingAutoSchema(AutoSchema):
    def _validates_query(self) -> bool:
        return any(_is_serializer(parameter) for parameter in self.get_override_parameters())

    def _is_paginated(self) -> bool:
        return self.method == "GET" and self._is_list_view() and self._get_paginator() is not None

    def _error_responses(self) -> dict[str, OpenApiResponse]:
        errors = {"500": error_response("Internal error (`internal_error`).")}
        if self.view.get_authenticators():
            errors["401"] = error_response(
                "Missing, unknown or revoked API key, or inactive tenant "
                "(`not_authenticated`, `authentication_failed`)."
            )
            errors["429"] = error_response(
                "A failed authentication over the limit for this address or key prefix "
                "(`too_many_failed_authentications`); see Retry-After. A valid key is "
                "never refused."
            )
        # Every endpoint refuses credentials in the query string (config.middleware).
        in_query = "credentials in the query string (`credentials_in_query`)"
        if self.method in ("POST", "PUT", "PATCH"):
            errors["400"] = error_response(
                f"Invalid input (`validation_error`, `malformed_request`, ...) or {in_query}."
            )
            errors["413"] = error_response("Body too large (`request_too_large`).")
            errors["415"] = error_response("Body is not JSON (`unsupported_media_type`).")
        elif self._validates_query() or self._is_paginated():
            errors["400"] = error_response(
                "Invalid query parameters, a tampered `cursor` included (`validation_error`, "
                f"details name the parameter), or {in_query}."
            )
        else:
            errors["400"] = error_response(
                "Credentials in the query string (`credentials_in_query`)."
            )
        if "{" in self.path:
            errors["404"] = error_response("No such object for this tenant (`not_found`).")
        return errors

    def _is_list_view(self, serializer: Any = None) -> bool:
        # Our list endpoints are plain GenericAPIViews (no ListModelMixin): a paginated GET
        # without the object's id in its path answers a page, so document one.
        if super()._is_list_view(serializer):
            return True
        view = self.view
        return (
            self.method == "GET"
            and isinstance(view, generics.GenericAPIView)
            and view.pagination_class is not None
            and (view.lookup_url_kwarg or view.lookup_field) not in self.path
        )

    def _map_serializer_field(
        self, field: serializers.Field, direction: str, bypass_extensions: bool = False
    ) -> dict[str, Any]:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # What the fields really accept, so generated clients (and schemathesis) agree with
        # the validation: "" is refused where blank is not allowed ...
        if (
            direction == "request"
            and isinstance(field, serializers.CharField)
            and not field.allow_blank
            and not field.read_only
            and schema.get("type") == "string"
        ):
            schema.setdefault("minLength", 1)
        # ... and a decimal string needs a digit; "", "-" and "." match drf-spectacular's
        # pattern but are no numbers.
        if (
            isinstance(field, serializers.DecimalField)
            and "pattern" in schema
            and field.max_whole_digits
            and not field.localize
        ):
            sign = "" if field.min_value is not None and field.min_value >= 0 else "-?"
            whole, places = field.max_whole_digits, field.decimal_places
            schema["pattern"] = (
                rf"^{sign}(?:\d{{1,{whole}}}(?:\.\d{{0,{places}}})?|\.\d{{1,{places}}})$"
            )
        return schema

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
