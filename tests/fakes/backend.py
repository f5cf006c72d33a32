"""A fake model server that speaks Ollama's and OpenAI's HTTP APIs at once.

In-process: ``make_site(FakeState())`` or ``FakeBackend().start()`` (real reactor, port 0).
As a subprocess: ``python -m tests.fakes.backend --port 0`` prints
``FAKE listening on 127.0.0.1:<port>`` and runs until SIGTERM.

Behaviour is chosen per request by header, or for every request by ``POST /_fake/config``
(a JSON object merged into :data:`DEFAULT_CONFIG`; its optional ``"paths"`` list limits the
global ``delay``/``fail`` to those paths, so health probes of ``/api/tags`` stay healthy):

- ``X-Fake-Delay: S`` — seconds before the response headers;
- ``X-Fake-Chunks: N`` (default 3) and ``X-Fake-Interval: S`` (default 0) — the content
  chunks of a stream (and the words of a non-streaming answer), and the time between them;
- ``X-Fake-Fail``: ``status:NNN``, ``garbage``, ``reset``, ``stall``, ``stall_midstream``,
  ``die_midstream``.

``GET /_fake/stats`` counts what the fake saw (``/_fake/*`` itself is never counted),
``POST /_fake/reset`` restores config, stats and the model list,
``POST /_fake/models {"models": [...]}`` replaces the model list.
"""

from __future__ import annotations

import sys

from tests.fakes.ollama import ollama_error
from tests.fakes.openai import openai_error
from tests.fakes.process import FakeProcess, main
from tests.fakes.replies import Reply, dumps
from tests.fakes.server import FakeBackend, FakeResource, QuietSite, make_site, route
from tests.fakes.state import DEFAULT_CONFIG, DEFAULT_MODELS, FakeState, model_entry, normalize_model

__all__ = ["DEFAULT_CONFIG", "DEFAULT_MODELS", "FakeBackend", "FakeProcess", "FakeResource",
           "FakeState", "QuietSite", "Reply", "dumps", "make_site", "model_entry",
           "normalize_model", "ollama_error", "openai_error", "route"]

if __name__ == "__main__":
    main(sys.argv[1:])
