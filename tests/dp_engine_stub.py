"""A scripted stand-in for ``python -m fgrft.evaluation.backends.vllm SPEC`` in the data-parallel dispatch tests:
writes one completion per request naming the process and devices it ran on; a spec whose file name
ends in ``.dp1.json`` fails after its first completion when ``STUB_FAIL_DP1=1``."""
import json
import os
import sys
import time

from fgrft.evaluation.requests import Completion, CompletionSink

spec_path = sys.argv[1]
spec = json.loads(open(spec_path).read())
sink = CompletionSink(spec["sink"])
fail = os.environ.get("STUB_FAIL_DP1") == "1" and spec_path.endswith(".dp1.json")
for i, r in enumerate(spec["requests"]):
    if fail and i == 1:
        sys.exit(3)
    text = json.dumps({"pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "key": r["key"]})
    sink.append([Completion(key=r["key"], text=text, finish_reason="stop", output_tokens=1,
                            prompt_token_ids_hash="x")])
    time.sleep(0.05)
