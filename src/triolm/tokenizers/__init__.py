"""Tokenizers behind one small interface, and the incremental detokenizer."""
