from django.urls import path

from billing import apis, model_apis

urlpatterns = [
    path("models", model_apis.FoundationModelListApi.as_view(), name="model-list"),
    path(
        "models/<str:model_id>",
        model_apis.FoundationModelDetailApi.as_view(),
        name="model-detail",
    ),
    path("budgets", apis.BudgetListCreateApi.as_view(), name="budget-list"),
    path("budgets/<uuid:budget_id>", apis.BudgetDetailApi.as_view(), name="budget-detail"),
    path("quotas", apis.QuotaListCreateApi.as_view(), name="quota-list"),
    path("quotas/<uuid:quota_id>", apis.QuotaDetailApi.as_view(), name="quota-detail"),
    path("usage", apis.UsageApi.as_view(), name="usage"),
    path("usage/records", apis.UsageRecordListApi.as_view(), name="usage-records"),
    path("alerts", apis.AlertListApi.as_view(), name="alert-list"),
]
