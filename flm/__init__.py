"""FLM: a self-hosted gateway that turns a local model server into key-protected APIs."""

__version__ = "0.1.0"
