"""Stage 3 backends: vllm (offline engine), hf (transformers generate), openai, replay.

Every local backend receives the same prompt token ids, built once by
:func:`fgrft.inference.requests.encode_chat` from the model's own chat template,
so vLLM and transformers cannot drift apart on what the model is shown.
"""
