"""triolm router: one OpenAI + sessions endpoint over a fleet of engines (triolm, vLLM, SGLang)."""
