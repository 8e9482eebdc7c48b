"""clippo.eval: evaluation suites (zero-shot, retrieval, GLUE, VQA) and pure metric functions."""
