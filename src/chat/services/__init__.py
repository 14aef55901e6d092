"""Public surface of the chat context: assistants, conversations and their turns. Every
function takes and returns ``contracts.chat`` models; no ORM object leaves this package.
Other contexts import this package, never its modules."""

from chat.services._common import AssistantNotFound, ConversationNotFound, InvalidAssistant, TurnInProgress
from chat.services.assistants import (
    assistant_create,
    assistant_delete,
    assistant_get,
    assistant_list,
    assistant_update,
)
from chat.services.context import forget as context_forget
from chat.services.conversations import conversation_get, conversation_list, conversation_start
from chat.services.turns import turn_finished, turn_post

__all__ = [
    "AssistantNotFound",
    "ConversationNotFound",
    "InvalidAssistant",
    "TurnInProgress",
    "assistant_create",
    "assistant_delete",
    "assistant_get",
    "assistant_list",
    "assistant_update",
    "context_forget",
    "conversation_get",
    "conversation_list",
    "conversation_start",
    "turn_finished",
    "turn_post",
]
