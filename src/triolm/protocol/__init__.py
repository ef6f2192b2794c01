"""The OpenAI protocol without a web framework: request schemas and validation, sampling
parameters, response shapes, tool-call shaping, errors."""
