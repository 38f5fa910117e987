"""Multi-turn RAG chat (issue 4): sessions, prompts with citations, generator backends."""
