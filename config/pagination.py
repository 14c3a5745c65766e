from django.conf import settings
from rest_framework.pagination import CursorPagination


class NewestFirstCursorPagination(CursorPagination):
    """Stable paging under concurrent inserts: cursors, not page numbers."""

    ordering = "-created_at"
    page_size_query_param = "page_size"
    max_page_size = 200

    def __init__(self) -> None:
        self.page_size = settings.API_PAGE_SIZE


class SequenceCursorPagination(CursorPagination):
    """Message history, oldest first, by the per-conversation sequence number."""

    ordering = "sequence"
    page_size_query_param = "page_size"
    max_page_size = 200

    def __init__(self) -> None:
        self.page_size = settings.API_PAGE_SIZE
