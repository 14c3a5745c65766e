"""The real URLs plus views that fail on purpose, for the error-format tests."""

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import urlpatterns as real_urlpatterns


class ExplodingApi(APIView):
    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internal detail")


class ForbiddenApi(APIView):
    def get(self, request: Request) -> Response:
        raise PermissionDenied


def exploding_plain_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret internal detail")


test_only = [
    path("explode", ExplodingApi.as_view()),
    path("forbidden", ForbiddenApi.as_view()),
    path("explode-plain", exploding_plain_view),
]

urlpatterns = [path("api/test/", include(test_only)), *real_urlpatterns]
