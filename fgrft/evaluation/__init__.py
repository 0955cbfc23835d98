"""Stage 3: prompts, backends' hand-off, scoring, files and tracking of an evaluation.

    job.py         the Hydra job: items -> prompts -> completions -> scored predictions -> files
    requests.py    generation requests, sampling, the completion sink, per-sample keys and seeds
    resume.py      what a resumed run may reuse
    backends/      vllm (offline engine), hf (transformers generate), openai, replay

Every local backend receives the same prompt token ids, built once by
:func:`fgrft.evaluation.requests.encode_chat` from the model's own chat template,
so vLLM and transformers cannot drift apart on what the model is shown.

Never imports the other stages (generation, training, reporting) or the app; prompts and
hashes come from :mod:`fgrft.prompts`. Training reaches the evaluation job only through the
function its entrypoint hands it (``evaluate_after``).
"""
