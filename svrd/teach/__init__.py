"""Teacher rationales: prompt, backends (reference, openai, hf), answer cache, runner.

    from svrd.teach import teach, read_problems, write_outputs
    result = teach(read_problems("data/split/train.parquet", "data/split/val.parquet"), params.teach)
    write_outputs(result, "data/teach/rationales.parquet", "metrics/teach.json")
"""

from svrd.teach.prompt import PROMPT_VERSION, build_prompt
from svrd.teach.run import RATIONALE_SCHEMA, TeachResult, make_backend, read_problems, teach, write_outputs

__all__ = [
    "PROMPT_VERSION", "RATIONALE_SCHEMA", "TeachResult", "build_prompt", "make_backend", "read_problems",
    "teach", "write_outputs",
]
