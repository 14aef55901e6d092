"""The chat context. Its one public entry point is ``chat.services`` (typed with
``contracts.chat``): other contexts import nothing else from this package."""
