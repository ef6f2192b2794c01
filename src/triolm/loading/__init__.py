"""From files to a served model: model directories and GGUF files, the default model,
the random tiny model, the cache directory."""
