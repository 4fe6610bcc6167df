"""The schema of params.yaml, checked before any stage does work.

Stage scripts call `load_params()` and read attributes (`params.train.lr`). Every section is a
frozen pydantic model that forbids unknown keys: `dvc exp run -S train.lrr=1e-3` silently adds
a misspelled key to params.yaml, and without this check the experiment would run with the old
value. All problems are reported at once, one per line, each naming the dotted key:

    params.yaml: unknown key 'train.lrr' (did you mean 'train.lr'?)
    params.yaml: train.optimizer: must be 'adam', 'adamw', 'sgd' or 'adafactor' (got 'adamx')

Every key is required: params.yaml is the one place a knob's value lives (no code defaults
to drift from it). To vary a value in code or tests, use `params.with_overrides({...})`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from svrd.errors import SvrdError


class ParamsError(SvrdError):
    """params.yaml is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- value types --------------------------------------------------------------------------


def _no_bool(value: Any) -> Any:
    # pydantic's lax mode reads `lr: true` as 1.0; a boolean where a number belongs is a typo.
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


def _int_if_integral(value: float) -> float:
    # Keep `epochs: 6` an int (logs, file names) while still allowing `epochs: 0.5`.
    return int(value) if float(value).is_integer() else value


Int = Annotated[int, BeforeValidator(_no_bool)]
PosInt = Annotated[Int, Field(ge=1)]
NonNegInt = Annotated[Int, Field(ge=0)]
Seed = NonNegInt
# Floats are finite: `lr: .inf` passes a plain `gt=0`. (PyYAML reads `1e-3`, without a dot, as a
# string; pydantic's lax mode turns the string back into the float.)
Float = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
PosFloat = Annotated[Float, Field(gt=0)]
# A positive number kept an int when whole (`epochs: 6` in logs and file names; `epochs: 0.5` allowed).
PosCount = Annotated[PosFloat, AfterValidator(_int_if_integral)]
NonNegFloat = Annotated[Float, Field(ge=0)]
Share = Annotated[Float, Field(ge=0, le=1)]
Text = Annotated[str, Field(min_length=1)]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # train/prefer/tiny.pretrain: autocast over fp32 weights
# Names that end up in file names and metric keys (infer.models).
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
EnvVarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections, in params.yaml's order -------------------------------------------------------


class SampleParams(_Section):
    per_family: PosInt
    seed: Seed


class DataParams(_Section):
    source: Literal["sample", "scienceqa", "hf"]
    path: Text | None
    hf_config: Text | None
    sample: SampleParams

    @model_validator(mode="after")
    def _path_needed(self) -> DataParams:
        if self.source in ("scienceqa", "hf") and self.path is None:
            what = "the release folder" if self.source == "scienceqa" else "a dataset id, folder or Parquet files"
            raise ValueError(f"data.path is required when data.source is '{self.source}' ({what})")
        return self


class FilterParams(_Section):
    images_only: StrictBool
    on_invalid: Literal["error", "skip"]
    max_image_pixels: PosInt


class SplitParams(_Section):
    strategy: Literal["official", "stratified"]
    # train / val / test; every split non-empty, checked even under `official` so that switching
    # strategy never meets a broken value.
    fractions: tuple[
        Annotated[Float, Field(gt=0, lt=1)],
        Annotated[Float, Field(gt=0, lt=1)],
        Annotated[Float, Field(gt=0, lt=1)],
    ]
    seed: Seed
    max_train: PosInt | None
    max_val: PosInt | None
    max_test: PosInt | None

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, fractions: tuple[float, float, float]) -> tuple[float, float, float]:
        total = math.fsum(fractions)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train/val/test fractions must sum to 1 (they sum to {total:g})")
        return fractions


Url = Annotated[str, Field(pattern=r"^https?://\S+$")]


class TeachParams(_Section):
    backend: Literal["reference", "hf", "openai"]
    model: Text | None
    # one OpenAI-compatible server, or a list of data-parallel servers serving the same model
    base_url: Url | Annotated[list[Url], Field(min_length=1)] | None
    api_key_env: EnvVarName  # the variable's *name*; the key itself never enters params.yaml
    concurrency: Annotated[Int, Field(ge=1, le=1024)]
    batch_size: PosInt
    samples: PosInt
    temperature: NonNegFloat
    max_new_tokens: PosInt
    timeout_s: PosFloat
    max_retries: NonNegInt
    on_disagree: Literal["substitute", "drop", "answer_only"]
    on_contradiction: Literal["keep", "drop"]

    @model_validator(mode="after")
    def _backend_needs(self) -> TeachParams:
        missing = []
        if self.backend in ("hf", "openai") and self.model is None:
            missing.append("teach.model")
        if self.backend == "openai" and self.base_url is None:
            missing.append("teach.base_url")
        if missing:
            raise ValueError(f"{' and '.join(missing)} required when teach.backend is '{self.backend}'")
        return self


class StudentParams(_Section):
    model: Text
    trust_remote_code: StrictBool
    freeze_vision: StrictBool
    freeze_projector: StrictBool
    image_tokens: PosInt | None  # None: the family's native image processing


class TinyPretrainParams(_Section):
    """The base student's alignment stage: image -> caption on the training images (svrd.tiny)."""

    data: Literal["caption", "none"]  # none: the random-weight student of earlier releases
    prompt: Text  # the user turn's text beside the image
    epochs: PosCount
    lr: PosFloat
    batch_size: PosInt
    warmup_steps: NonNegInt
    max_length: PosInt
    group_by_length: StrictBool  # batches of similar length; on the sample they are one family each (see params.yaml)
    save_steps: NonNegInt  # checkpoint every N steps (a killed tiny_student resumes); 0: none
    precision: Precision  # autocast over fp32 weights, as train.precision (auto: bf16 where the device has it)


class TinyParams(_Section):
    vocab_size: Annotated[Int, Field(ge=32)]  # room for the special tokens and the byte alphabet
    image_size: PosInt
    patch_size: PosInt
    vision_width: PosInt
    vision_layers: PosInt
    text_width: PosInt
    text_layers: PosInt
    heads: PosInt
    # which vision hidden state the projector reads, counted from the end: -1 the last layer's output,
    # -(vision_layers + 1) the patch embeddings themselves
    vision_feature_layer: Int
    # std of the text model's initial weights: at the usual 0.02 the tiny model's attention stayed
    # uniform and it learnt a bigram model of the rationales (README, "The embedded sample")
    init_std: PosFloat
    seed: Seed
    pretrain: TinyPretrainParams

    @model_validator(mode="after")
    def _shapes(self) -> TinyParams:
        if self.image_size % self.patch_size:
            raise ValueError(f"tiny.image_size ({self.image_size}) must be a multiple of tiny.patch_size ({self.patch_size})")
        if self.text_width % self.heads:
            raise ValueError(f"tiny.text_width ({self.text_width}) must be a multiple of tiny.heads ({self.heads})")
        if not -(self.vision_layers + 1) <= self.vision_feature_layer <= -1:
            raise ValueError(f"tiny.vision_feature_layer must lie in [-{self.vision_layers + 1}, -1] "
                             f"(got {self.vision_feature_layer})")
        return self


class LoraParams(_Section):
    enabled: StrictBool
    r: PosInt
    alpha: PosCount  # whole numbers stay ints, as PEFT expects
    dropout: Annotated[Float, Field(ge=0, lt=1)]
    # 'all-linear' (every linear layer of the text model; never the vision tower, projector or
    # output head) or leaf module names (q_proj, v_proj, ...), again within the text model only
    target_modules: Text | Annotated[tuple[Text, ...], Field(min_length=1)]
    merge: StrictBool


class TrainParams(_Section):
    target: Literal["rationale", "answer", "rationale_after", "mix"]
    conclusion: Literal["letter", "letter_text", "text"]
    mix_answer_share: Share
    optimizer: Literal["adam", "adamw", "sgd", "adafactor"]
    lr: PosFloat
    epochs: PosCount  # fractional epochs allowed (e.g. 0.5)
    batch_size: PosInt
    grad_accum: PosInt
    warmup_steps: NonNegInt
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    weight_decay: NonNegFloat
    max_length: PosInt | None  # None: the longest example's real length
    group_by_length: StrictBool
    precision: Precision
    gradient_checkpointing: StrictBool
    data_workers: NonNegInt | Literal["auto"] = "auto"  # processes preparing batches (svrd.distill.data_workers)
    # frozen vision features from stage features (svrd.features), reused across epochs/sweeps; needs freeze_vision
    cache_vision_features: StrictBool = False
    save_steps: NonNegInt  # checkpoint every N optimizer steps; 0: no checkpoints (no resume)
    seed: Seed
    eval_questions: NonNegInt  # validation questions answered after each epoch; 0: off
    eval_max_new_tokens: PosInt
    lora: LoraParams

    @model_validator(mode="after")
    def _mix_share(self) -> TrainParams:
        # share 0 or 1 would silently turn `mix` into `rationale` or `answer`
        if self.target == "mix" and not 0 < self.mix_answer_share < 1:
            raise ValueError(
                f"train.mix_answer_share must be strictly between 0 and 1 when train.target is 'mix' "
                f"(got {self.mix_answer_share:g})"
            )
        return self


class PreferParams(_Section):
    """Stage prefer: DPO on the distilled student's own sampled reasoning chains."""

    samples: Annotated[Int, Field(ge=2)]  # k chains per question: a pair needs a correct and an incorrect one
    temperature: PosFloat  # sampling only (0 would be greedy: k identical chains)
    top_p: Annotated[Float, Field(gt=0, le=1)]
    max_new_tokens: PosInt
    max_questions: PosInt | None  # first N training questions; None: all
    batch_size: PosInt  # questions per generate() call
    min_correct: Share
    max_correct: Share
    max_pairs: PosInt  # m: pairs per question
    beta: PosFloat
    lr: PosFloat
    epochs: PosCount
    train_batch_size: PosInt
    grad_accum: PosInt
    warmup_steps: NonNegInt
    max_length: PosInt
    precision: Precision
    seed: Seed

    @model_validator(mode="after")
    def _band(self) -> PreferParams:
        if self.min_correct > self.max_correct:
            raise ValueError(f"prefer.min_correct ({self.min_correct:g}) must not exceed prefer.max_correct "
                             f"({self.max_correct:g})")
        return self


# An infer.models entry's path may name one of these params instead of a folder or Hub id.
MODEL_PARAM_REFS = ("student.model", "teach.model")


class InferModelParams(_Section):
    path: Text  # a folder, a Hub id, or one of MODEL_PARAM_REFS
    dep: Text  # the artifact DVC watches for this entry
    trust_remote_code: StrictBool | None = None  # None: student.trust_remote_code (remote-code baselines)


class InferBeamOpenAIParams(_Section):
    base_url: Url | None  # an OpenAI-compatible server, e.g. http://localhost:8000/v1
    model: Text | None  # the model name it serves
    api_key_env: EnvVarName  # the variable's *name*; the key itself never enters params.yaml
    concurrency: Annotated[Int, Field(ge=1, le=1024)]
    timeout_s: PosFloat
    max_retries: NonNegInt


class InferBeamParams(_Section):  # infer.mode stage_beam (svrd.infer.stage_beam)
    candidates: PosInt  # sampled per stage per question
    judge: Literal["likelihood", "self", "openai"]  # svrd.infer.beam_judges.JUDGES
    temperature: PosFloat
    openai: InferBeamOpenAIParams  # judge: openai only

    @model_validator(mode="after")
    def _openai_needs(self) -> InferBeamParams:
        missing = [f"infer.beam.openai.{k}" for k in ("base_url", "model") if getattr(self.openai, k) is None]
        if self.judge == "openai" and missing:
            raise ValueError(f"{' and '.join(missing)} required when infer.beam.judge is 'openai'")
        return self


class InferParams(_Section):
    # name -> entry, one infer stage per entry (dvc.yaml foreach); names reach file names
    models: Annotated[dict[Name, InferModelParams], Field(min_length=1)]
    batch_size: PosInt
    max_new_tokens: PosInt
    mode: Literal["generate", "likelihood", "self_consistency", "stage_beam"]  # svrd.infer.predict.MODES
    likelihood_answer: Literal["letter", "letter_text", "text"]  # svrd.infer.likelihood.LIKELIHOOD_ANSWERS
    samples: PosInt  # self_consistency: sampled chains per question (the votes)
    temperature: PosFloat  # self_consistency: sampling temperature (0 would be greedy: identical chains)
    seed: Seed  # self_consistency: sampling seed (with the batch's pids)
    engine: Literal["hf", "vllm"]  # vllm: GPU only, generate mode only (svrd.infer.vllm_engine)
    beam: InferBeamParams  # stage_beam only

    @model_validator(mode="after")
    def _engine_mode(self) -> InferParams:
        if self.engine == "vllm" and self.mode != "generate":
            raise ValueError(f"infer.engine: vllm decodes greedily only; infer.mode {self.mode!r} needs engine hf")
        return self


# Stage score reads Table 2's files only from this folder, which dvc.yaml lists as one of its deps: DVC
# cannot take a dep from a param that may be null, so a fixed folder is what makes an edited answers file
# re-run score (tests/test_open_stage.py checks dvc.yaml lists it).
OPEN_DIR = "data/open"


def _under_open_dir(value: str) -> str:
    parts = PurePosixPath(value).parts
    if value.startswith("/") or "\\" in value or ".." in parts or len(parts) < 3 or "/".join(parts[:2]) != OPEN_DIR:
        raise ValueError(f"must be a file under {OPEN_DIR}/, the folder the score stage depends on (got {value!r})")
    return "/".join(parts)


OpenFile = Annotated[Text, AfterValidator(_under_open_dir)]


class ScoreOpenParams(_Section):
    """Table 2 in stage score: free-form answers scored as `svrd score-open` does (svrd.open_scoring)."""

    references: OpenFile
    predictions: Annotated[dict[Name, OpenFile], Field(min_length=1)]  # one Table 2 row per entry
    bertscore_model: Text | None  # Hub id or local folder (under data/open/); None: BLEU and ROUGE only
    bertscore_layers: PosInt | None  # None: bert-score's tuned layer for a model it knows, else the last
    bertscore_rescale: StrictBool  # bert-score's English baseline rescaling


class ScoreParams(_Section):
    open: ScoreOpenParams | None  # None: no Table 2 (the default)


class Params(_Section):
    data: DataParams
    filter: FilterParams
    split: SplitParams
    teach: TeachParams
    student: StudentParams
    tiny: TinyParams
    train: TrainParams
    prefer: PreferParams
    infer: InferParams
    score: ScoreParams

    @model_validator(mode="after")
    def _model_refs(self) -> Params:
        unset = []
        for name, entry in self.infer.models.items():
            if entry.path in MODEL_PARAM_REFS:
                section, key = entry.path.split(".")
                if getattr(getattr(self, section), key) is None:
                    unset.append(f"infer.models.{name}.path refers to {entry.path}, which is not set")
        if unset:
            raise ValueError("; ".join(unset))
        return self

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "params") -> Params:
        """A validated copy with dotted keys replaced: `p.with_overrides({"train.lr": 1e-3})`."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                child = node.get(part)
                if not isinstance(child, dict):
                    raise ParamsError([f"{source}: unknown section '{dotted}'"])
                node = child
            node[leaf] = value
        return params_from_dict(data, source=source)


# --- secrets --------------------------------------------------------------------------------

# Values shaped like common API keys: OpenAI (sk-…), Hugging Face (hf_…), GitHub, AWS.
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16})"
)
# Key names that hold a secret (not `max_new_tokens`, not `api_key_env`, which holds a name).
_SECRET_KEY = re.compile(r"^(?:.*[_-])?(?:api[_-]?key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _secret_problems(raw: Any, source: str) -> list[tuple[str, str]]:
    problems = []
    for dotted, value in _leaves(raw):
        leaf = re.sub(r"\[\d+\]$", "", dotted).rsplit(".", 1)[-1]
        # secrets are strings: `max_new_token: 5` is a typo, not a token
        if isinstance(value, str) and (_SECRET_VALUE.search(value) or (_SECRET_KEY.match(leaf) and value.strip())):
            # never echo the value: this message reaches logs
            line = (
                f"{source}: {dotted} looks like an API key or secret; keys belong in the environment, "
                f"not in params.yaml (teach.api_key_env names the variable that holds it)"
            )
            problems.append((dotted, line))
    return problems


# --- error messages -------------------------------------------------------------------------


def _clean(text: str) -> str:
    """No secrets and no control characters (a key named '\\x1e' would split the line)."""
    text = _SECRET_VALUE.sub("<redacted>", text)
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and type(None) in get_args(annotation):  # `Section | None` (score.open) names Section
        annotation = args[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _resolve(loc: tuple) -> tuple[str, type[BaseModel] | None, type[BaseModel] | None]:
    """Dotted key for a pydantic loc, the model owning its last named part, and the model it
    names (None for a leaf).

    Walks the schema so that union branch tags pydantic puts in the loc ('str', 'tuple[...]',
    'function-after[...]') are dropped, list indices become `[i]` and mapping keys stay.
    """
    node: Any = Params  # the annotation at the current position
    parent: type[BaseModel] | None = None
    parts: list[str] = []
    for part in loc:
        model = _submodel(node)
        if part == "[key]":  # the mapping key just added is itself the bad value
            node = None
        elif model is not None:
            parent = model
            parts.append(str(part))
            # a name the model does not know is an unknown key (extra_forbidden)
            node = model.model_fields[part].annotation if part in model.model_fields else None
        elif get_origin(node) is dict:
            parts.append(str(part))
            node = get_args(node)[1]
        elif isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
            node = None
        # anything else is a union branch tag: not part of the key
    return ".".join(parts), parent, _submodel(node)


def _all_keys(model: type[BaseModel] = Params, prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        yield dotted
        sub = _submodel(field.annotation)
        if sub is not None:
            yield from _all_keys(sub, dotted)


def _unknown_key(dotted: str, parent: type[BaseModel] | None) -> str:
    section, _, leaf = dotted.rpartition(".")
    known = _field_names(parent) if parent is not None else []
    close = difflib.get_close_matches(leaf, known, n=1)
    if close:
        return f"unknown key '{dotted}' (did you mean '{section + '.' if section else ''}{close[0]}'?)"
    # `train.max_new_tokens`: the right name in the wrong section
    elsewhere = [key for key in _all_keys() if key.rsplit(".", 1)[-1] == leaf]
    if elsewhere:
        return f"unknown key '{dotted}' (did you mean '{elsewhere[0]}'?)"
    where = f"in section '{section}'" if section else "at the top level"
    return f"unknown key '{dotted}' (known keys {where}: {', '.join(known)})"


def _describe(error: dict) -> tuple[str, str]:
    dotted, parent, model = _resolve(tuple(error["loc"]))
    kind = error["type"]
    if kind == "extra_forbidden":
        return dotted, _unknown_key(dotted, parent)
    if kind == "missing" and dotted.endswith("]"):  # a tuple given too few items
        return dotted, f"{dotted.rsplit('[', 1)[0]}: too few items ({dotted} is missing)"
    if kind == "missing":
        return dotted, f"missing key '{dotted}'"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    for noun in ("String", "List", "Tuple", "Dictionary"):
        message = message.replace(f"{noun} should", "must")
    if kind == "value_error" and model is not None:
        return dotted, message  # a section's cross-field check: its message names the keys
    if kind != "value_error" and not isinstance(error.get("input"), (dict, list, type(None))):
        message += f" (got {error['input']!r:.80})"
    return dotted, f"{dotted}: {message}" if dotted else message


def _format(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted key, line) per key; a union's alternatives are joined with 'or' on one line."""
    by_key: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        dotted, line = _describe(error)
        lines = by_key.setdefault(dotted, [])
        if line not in lines:
            lines.append(line)
    problems = []
    for dotted, lines in by_key.items():
        head = f"{dotted}: " if dotted else ""
        if len(lines) > 1 and all(line.startswith(head) for line in lines):
            lines = [head + " or ".join(line.removeprefix(head) for line in lines)]
        problems.extend((dotted, line) for line in lines)
    return problems


# --- API ------------------------------------------------------------------------------------


def params_from_dict(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping; raise ParamsError listing every problem."""
    if not isinstance(raw, Mapping):
        raise ParamsError([f"{source}: expected a mapping of sections, got {type(raw).__name__}"])
    secrets = _secret_problems(raw, source)
    problems = [_clean(line) for _, line in secrets]
    try:
        params = Params.model_validate(dict(raw))
    except ValidationError as exc:
        flagged = {dotted for dotted, _ in secrets}
        for dotted, line in _format(exc):
            if dotted not in flagged:  # e.g. `teach.api_key: sk-…` is reported once, as a secret
                problems.append(_clean(f"{source}: {line}"))
    if problems:
        raise ParamsError(problems)
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; in params.yaml that hides an edit."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: let PyYAML report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (run from the repository root, as DVC stages are)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ParamsError([f"{path}: not found (run from the repository root)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError([f"{path}: cannot be read ({exc})"]) from None
    except yaml.YAMLError as exc:
        raise ParamsError([f"{path}: not valid YAML ({exc})".replace("\n", " ")]) from None
    return params_from_dict(raw, source=str(path))
