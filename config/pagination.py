"""Cursor pagination whose cursors are checked before they reach a query.

DRF's cursor is base64 text the client hands back, holding the position to continue from as
a string; DRF filters on it as it is, so a tampered position of the wrong type reaches the
database (a 500 on an integer column, a bare list of messages on a date). Here an undecodable
cursor, or a position that is not a value of the ordering field, answers 400
`validation_error` naming `cursor`.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

INVALID_CURSOR = "Invalid cursor: use the `next` or `previous` link of an earlier page."


class CheckedCursorPagination(CursorPagination):
    page_size_query_param = "page_size"
    max_page_size = 200

    def __init__(self) -> None:
        self.page_size = settings.API_PAGE_SIZE

    def paginate_queryset(
        self, queryset: QuerySet, request: Request, view: Any = None
    ) -> list[Any] | None:
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise self._invalid() from None
        if cursor is None or cursor.position is None:
            return cursor
        # DRF compares positions as text with str() of the field's value: keep that spelling.
        return cursor._replace(position=str(self._checked_position(cursor.position)))

    def _checked_position(self, position: str) -> Any:
        field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
        try:
            value = field.to_python(position)
            # Integer columns: the backend's range (an overflow is a database error).
            field.run_validators(value)
            if isinstance(value, datetime.datetime):
                # The value is sent to the database in UTC; years 1 and 9999 can overflow.
                if value.tzinfo is None:
                    value = value.replace(tzinfo=datetime.UTC)
                value = value.astimezone(datetime.UTC)
                connection.ops.adapt_datetimefield_value(value)
        except (DjangoValidationError, OverflowError, ValueError, TypeError):
            raise self._invalid() from None
        if value is None:
            raise self._invalid()
        return value

    def _invalid(self) -> ValidationError:
        return ValidationError({self.cursor_query_param: [INVALID_CURSOR]})

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.cursor_query_param:
                parameter["description"] = (
                    "The `cursor` of the `next` or `previous` link of an earlier page, as it "
                    "is; anything else answers 400 `validation_error`."
                )
            elif parameter["name"] == self.page_size_query_param:
                parameter["description"] = (
                    f"Results per page, default {self.page_size}; larger values are cut to "
                    f"{self.max_page_size}."
                )
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                }
        return parameters


class NewestFirstCursorPagination(CheckedCursorPagination):
    """Stable paging under concurrent inserts: cursors, not page numbers."""

    ordering = "-created_at"


class SequenceCursorPagination(CheckedCursorPagination):
    """Message history, oldest first, by the per-conversation sequence number."""

    ordering = "sequence"
