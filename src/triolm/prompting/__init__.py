"""From messages to prompt tokens and back: chat templates (Jinja2, Hugging Face semantics)
in sandboxed workers, mistral-common rendering, tool-call parsers, reasoning, grammars."""
