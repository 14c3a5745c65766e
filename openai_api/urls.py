from django.urls import path

from openai_api import apis

urlpatterns = [
    path("chat/completions", apis.ChatCompletionsApi.as_view(), name="openai-chat-completions"),
    path("models", apis.ModelListApi.as_view(), name="openai-model-list"),
    path("models/<str:model_id>", apis.ModelDetailApi.as_view(), name="openai-model-detail"),
]
