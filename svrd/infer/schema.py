"""The predictions table every answering mode and engine writes (data/infer/NAME/predictions.parquet)."""

from __future__ import annotations

import pyarrow as pa

PREDICTION_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("model", pa.string()),
        ("mode", pa.string()),  # generate | likelihood | self_consistency | stage_beam
        ("raw", pa.string()),  # the greedy output (self_consistency: the first sampled chain voting for choice), special tokens removed
        ("choice", pa.int64()),  # the scored answer: generate: = choice_text; likelihood: the most probable option;
                                 # self_consistency: the majority vote
        ("choice_text", pa.int64()),  # what `raw` commits to (extract_choice); null when nothing
        ("option_logprobs", pa.list_(pa.float64())),  # likelihood: each option's log-probability; null otherwise
        ("votes", pa.string()),  # self_consistency: JSON list, each option's vote count; null otherwise
        ("new_tokens", pa.int64()),  # self_consistency, stage_beam: greedy output and all samples together
        ("beam_generated", pa.int64()),  # stage_beam: candidates sampled, all stages; null otherwise
        ("beam_judged", pa.int64()),  # stage_beam: judge calls (comparisons; likelihood: candidates scored)
    ]
)  # no timings: predict's rows carry "seconds" until run_inference moves them to metrics/
