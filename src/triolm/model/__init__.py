"""Torch modules for the llama family and the loaders that fill them from model files."""
