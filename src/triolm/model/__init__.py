"""Torch modules: the llama and gemma architectures and their layers."""
