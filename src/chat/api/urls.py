"""Routes of the chat API (included by config.urls under ``/api/v1/``)."""

from django.urls import path

from chat.api.views import (
    AssistantConversationsApi,
    AssistantDetailApi,
    AssistantListCreateApi,
    ConversationDetailApi,
    ConversationListCreateApi,
    ConversationMessagesApi,
)

urlpatterns = [
    path("assistants/", AssistantListCreateApi.as_view(), name="assistants"),
    path("assistants/<uuid:assistant_id>/", AssistantDetailApi.as_view(), name="assistant-detail"),
    path(
        "assistants/<uuid:assistant_id>/conversations/",
        AssistantConversationsApi.as_view(),
        name="assistant-conversations",
    ),
    path("conversations/", ConversationListCreateApi.as_view(), name="conversations"),
    path("conversations/<uuid:conversation_id>/", ConversationDetailApi.as_view(), name="conversation-detail"),
    path(
        "conversations/<uuid:conversation_id>/messages/",
        ConversationMessagesApi.as_view(),
        name="conversation-messages",
    ),
]
