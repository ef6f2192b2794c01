"""Model file formats: GGUF (reader, quants, layout, weights, writer), safetensors,
Hugging Face config, Mistral's native layout, loading limits."""
