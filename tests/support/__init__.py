"""Test support used by tests and benchmarks, never by fgrft: scripted fault and batch servers
(OpenAI-compatible, for faults a real server cannot be made to produce on demand) and the
scripted Stage 1 step responder."""
