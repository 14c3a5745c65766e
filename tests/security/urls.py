"""The real URLs plus views that fail on purpose, inside and outside /api/."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import urlpatterns as real_urlpatterns

FAILURE_DETAIL = "secret internal detail"


class ExplodingApi(APIView):
    def get(self, request: Request) -> Response:
        raise RuntimeError(FAILURE_DETAIL)


def exploding_page(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(FAILURE_DETAIL)


urlpatterns = [
    path("api/test/explode", ExplodingApi.as_view()),
    path("boom", exploding_page),
    *real_urlpatterns,
]
