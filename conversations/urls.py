from django.urls import path

from conversations import apis, chat_apis, sse

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

urlpatterns += [
    path(
        "conversations",
        chat_apis.ConversationListCreateApi.as_view(),
        name="conversation-list",
    ),
    path(
        "conversations/<uuid:conversation_id>",
        chat_apis.ConversationDetailApi.as_view(),
        name="conversation-detail",
    ),
    path(
        "conversations/<uuid:conversation_id>/messages",
        chat_apis.ConversationMessagesApi.as_view(),
        name="conversation-messages",
    ),
    path(
        "conversations/<uuid:conversation_id>/context",
        chat_apis.ConversationContextApi.as_view(),
        name="conversation-context",
    ),
    path("messages/<uuid:message_id>", chat_apis.MessageDetailApi.as_view(), name="message-detail"),
    path(
        "messages/<uuid:message_id>/cancel",
        chat_apis.MessageCancelApi.as_view(),
        name="message-cancel",
    ),
    path("messages/<uuid:message_id>/stream", sse.message_stream, name="message-stream"),
]
