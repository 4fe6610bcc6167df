"""infer: answering the test split's questions with a model, one predictions row per pid.

Nothing is imported here (a submodule's import never runs another's); import the module you need.
Lower modules never import higher ones:

    run.py               the infer stage: load the model, resume, metrics; hands infer.engine=vllm to vllm_engine.py
      predict.py         batches over the questions; MODES: infer.mode -> its module
        generate.py      infer.mode=generate: the greedy rows every mode starts from (Options, Batch)
        likelihood.py    infer.mode=likelihood
        self_consistency.py   infer.mode=self_consistency
        stage_beam.py    infer.mode=stage_beam (its judges: beam_judges.py)
      vllm_engine.py     infer.engine=vllm (generate mode)
      vilt.py            an entry whose model is a ViLT VQA classifier (option choice, no generation)
      resume.py          partial logs: rows persisted per batch, read back by a resumed run
    shared below the modes (svrd/prefer.py uses them too):
      generation.py      greedy decoding of an encoded batch (finished rows leave the batch)
      sampling.py        sampled chains, k per question, seeded per batch
      logprobs.py        log-probabilities of given continuations
      encoding.py        examples -> left-padded prompt batches
      schema.py          the predictions table
"""
