"""triolm: an OpenAI-compatible LLM inference server on Trio, with its own PyTorch engine."""

__version__ = "0.1.0"
