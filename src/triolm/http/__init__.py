"""HTTP routes: thin handlers that parse, call `serving`, and shape OpenAI responses."""
