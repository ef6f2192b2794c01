"""The shortest path through the product: real server, official client, tiny real model."""


def test_chat_completion_and_stream_agree(client, served_model):
    kwargs = dict(model=served_model.name, messages=[{"role": "user", "content": "Hello"}],
                  max_tokens=12, seed=7, temperature=0.9)
    full = client.chat.completions.create(**kwargs)
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
             if c.choices]
    assert full.id.startswith("chatcmpl-")
    assert full.usage.completion_tokens == 12
    assert full.choices[0].finish_reason == "length"
    assert "".join(parts) == full.choices[0].message.content
