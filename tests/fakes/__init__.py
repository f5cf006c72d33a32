"""Fakes shared by the tests: a model server speaking Ollama and OpenAI."""
