"""Chat layer: templates (Jinja2, Hugging Face semantics), mistral-common adapter, tool-call parsing."""
