from django.urls import path

from llm.api.sse import task_events
from llm.api.views import AITaskCancelApi, AITaskDetailApi, AITaskListCreateApi

urlpatterns = [
    path("ai-tasks/", AITaskListCreateApi.as_view(), name="ai-tasks"),
    path("ai-tasks/<uuid:task_id>/", AITaskDetailApi.as_view(), name="ai-task-detail"),
    path("ai-tasks/<uuid:task_id>/cancel/", AITaskCancelApi.as_view(), name="ai-task-cancel"),
    path("ai-tasks/<uuid:task_id>/events/", task_events, name="ai-task-events"),
]
