from django.urls import path

from billing.api.views import BudgetDetailApi, UsageReportApi

urlpatterns = [
    path("budget/", BudgetDetailApi.as_view(), name="billing-budget"),
    path("usage/", UsageReportApi.as_view(), name="billing-usage"),
]
