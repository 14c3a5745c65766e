from django.urls import path

from conversations import apis

urlpatterns = [
    path("tenant", apis.TenantMeApi.as_view(), name="tenant-me"),
    path("api-keys", apis.ApiKeyListCreateApi.as_view(), name="api-key-list"),
    path("api-keys/<uuid:api_key_id>", apis.ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path(
        "api-keys/<uuid:api_key_id>/revoke",
        apis.ApiKeyRevokeApi.as_view(),
        name="api-key-revoke",
    ),
]
