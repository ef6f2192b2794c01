"""The synchronous, thread-confined inference engine (nano-vllm shaped)."""
