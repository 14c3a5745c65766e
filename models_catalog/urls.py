from django.urls import path

from models_catalog import apis

urlpatterns = [
    path("models", apis.FoundationModelListApi.as_view(), name="model-list"),
    path("models/<str:model_id>", apis.FoundationModelDetailApi.as_view(), name="model-detail"),
]
