"""Log the calls of LLM SDKs without changing the application's code around them.

Each integration is a module of its own that imports its SDK (an optional extra of
eventlog), so importing this package needs none of them:

- :mod:`eventlog.integrations.openai`: ``instrument(client)`` for ``openai.OpenAI`` and
  ``openai.AsyncOpenAI`` (``pip install 'eventlog[openai]'``).
"""
