"""Readers: the real ScienceQA release layout and Hugging Face copies (Parquet, save_to_disk)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fixture_data import scienceqa_sample
from PIL import Image

from svrd.errors import RecordError, SvrdError
from svrd.filter import filter_records
from svrd.records import SCIENCEQA_FIELDS
from svrd.sources import count_release, iter_hf, iter_release
from svrd.split import split_table

SAMPLE = scienceqa_sample()


def png(color=(200, 30, 30), size=(6, 4), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The real sample with a placeholder image for every question whose `image` is "image.png",
    plus a decoy folder holding only choice_0.png for a question whose `image` is null."""
    root = tmp_path_factory.mktemp("release") / "scienceqa"
    shutil.copytree(SAMPLE, root)
    problems = json.loads((root / "problems.json").read_text())
    image = png()
    decoy = None
    for pid, rec in problems.items():
        if rec["image"] == "image.png":
            folder = root / "images" / rec["split"] / pid
            folder.mkdir(parents=True)
            (folder / "image.png").write_bytes(image)
        elif decoy is None:
            decoy = pid
            folder = root / "images" / rec["split"] / pid
            folder.mkdir(parents=True)
            (folder / "choice_0.png").write_bytes(image)
    (root / "decoy_pid").write_text(decoy)
    return root


@pytest.fixture(scope="module")
def filtered(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("filtered")
    summary = filter_records(iter_release(release), out / "problems.parquet", out / "rejects.jsonl",
                             total=count_release(release))
    return summary, pq.read_table(out / "problems.parquet")


def test_release_image_questions_per_official_split(filtered, release):
    summary, table = filtered
    assert summary.read == 1773 and summary.rejected == 0
    assert summary.kept == 879 and summary.without_image == 1773 - 879
    parts = split_table(table, strategy="official")
    assert {k: v.num_rows for k, v in parts.items()} == {"train": 521, "val": 191, "test": 167}
    decoy = (release / "decoy_pid").read_text()
    assert decoy not in set(table.column("pid").to_pylist())  # choice_0.png only: no image


def test_release_records_keep_pid_split_caption(filtered):
    _, table = filtered
    rows = {r["pid"]: r for r in table.slice(0, 50).to_pylist()}
    captions = json.loads((SAMPLE / "captions.json").read_text())["captions"]
    pid, row = next(iter(rows.items()))
    assert row["caption"] == captions.get(pid, "")
    assert Image.open(io.BytesIO(row["image"])).mode == "RGB"
    assert row["split"] in ("train", "val", "test")


def test_release_all_questions_validate(release, tmp_path):
    """Every real record is valid, text-only ones included (the capitalization questions offer
    options that differ only in case: 'Dear Pablo,' / 'dear Pablo,')."""
    summary = filter_records(iter_release(release), tmp_path / "all.parquet", tmp_path / "rejects.jsonl",
                             images_only=False)
    assert summary.read == summary.kept == 1773 and summary.rejected == 0
    table = pq.read_table(tmp_path / "all.parquet")
    parts = split_table(table, strategy="official")
    assert {k: v.num_rows for k, v in parts.items()} == {"train": 1041, "val": 371, "test": 361}
    images = table.column("image").to_pylist()
    assert sum(img is not None for img in images) == 879


def test_release_image_is_decided_by_the_field(release):
    decoy = (release / "decoy_pid").read_text()
    rec = next(r for r in iter_release(release) if r["pid"] == decoy)
    assert rec["image"] is None


def test_release_path_escape_and_missing_file_are_yielded_errors(tmp_path):
    root = tmp_path / "rel"
    (root / "images" / "train" / "2").mkdir(parents=True)
    (root / "images" / "train" / "2" / "image.png").write_bytes(png())
    base = {"question": "Q?", "choices": ["a", "b"], "answer": 0, "hint": "", "task": "closed choice",
            "grade": "grade1", "subject": "natural science", "topic": "t", "category": "c", "skill": "s",
            "lecture": "", "solution": "", "split": "train"}
    problems = {"1": {**base, "image": "../../../etc/passwd"}, "2": {**base, "image": "image.png"},
                "3": {**base, "image": "image.png"}}
    (root / "problems.json").write_text(json.dumps(problems))
    out = list(iter_release(root))
    assert isinstance(out[0], RecordError) and (out[0].pid, out[0].field) == ("1", "image")
    assert "leaves the dataset folder" in out[0].reason
    assert out[1]["image"] == png()  # the reader goes on past a bad record
    assert isinstance(out[2], RecordError) and "not found" in out[2].reason


def test_release_folder_without_problems_json(tmp_path):
    with pytest.raises(SvrdError, match="no problems.json"):
        count_release(tmp_path)
    with pytest.raises(SvrdError, match="no problems.json"):
        next(iter_release(tmp_path))


# --- Hugging Face copies ----------------------------------------------------------------------


def hf_rows(n: int, tag: str, with_image=True) -> dict[str, list]:
    colors = [(i * 40 % 256, 10, 200) for i in range(n)]
    return {
        "image": [{"bytes": png(c), "path": None} if with_image and i % 3 != 2 else None for i, c in enumerate(colors)],
        "question": [f"{tag} question {i}?" for i in range(n)],
        "choices": [["yes", "no", "maybe"][: 2 + i % 2] for i in range(n)],
        "answer": [i % 2 for i in range(n)],
        "hint": ["" for _ in range(n)],
        "task": ["closed choice"] * n,
        "grade": ["grade3"] * n,
        "subject": ["natural science"] * n,
        "topic": ["biology"] * n,
        "category": ["c"] * n,
        "skill": ["s"] * n,
        "lecture": [""] * n,
        "solution": [f"{tag} solution {i}" for i in range(n)],
    }


@pytest.fixture(scope="module")
def hf_dataset():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("int8"),
        **{c: datasets.Value("string") for c in SCIENCEQA_FIELDS if c not in ("image", "question", "choices", "answer")},
    })
    sizes = {"train": 5, "validation": 4, "test": 3}
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(hf_rows(n, split), features=features, split=split)
        for split, n in sizes.items()
    })


def _check_hf_records(records, hf_dataset):
    records = list(records)
    assert [r["pid"] for r in records] == (
        [f"hf-train-{i:06d}" for i in range(5)] + [f"hf-val-{i:06d}" for i in range(4)]
        + [f"hf-test-{i:06d}" for i in range(3)]
    )
    assert {r["split"] for r in records} == {"train", "val", "test"}
    by_pid = {r["pid"]: r for r in records}
    assert by_pid["hf-val-000001"]["question"] == "validation question 1?"
    assert by_pid["hf-test-000002"]["image"] is None  # text-only row
    assert by_pid["hf-train-000001"]["answer"] == 1 and isinstance(by_pid["hf-train-000001"]["answer"], int)
    assert by_pid["hf-train-000001"]["choices"] == ["yes", "no", "maybe"]
    img = Image.open(io.BytesIO(by_pid["hf-train-000001"]["image"]))
    assert img.size == (6, 4) and img.convert("RGB").getpixel((0, 0)) == (40, 10, 200)
    return records


def test_hf_parquet_folder(hf_dataset, tmp_path):
    for split, ds in hf_dataset.items():
        ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"))
    schema = pq.read_schema(tmp_path / "data" / "train-00000-of-00001.parquet")
    assert str(schema.field("answer").type) == "int8"
    assert schema.field("image").type.names == ["bytes", "path"]
    _check_hf_records(iter_hf(str(tmp_path / "data")), hf_dataset)


def test_hf_parquet_filters_and_decodes(hf_dataset, tmp_path):
    for split, ds in hf_dataset.items():
        ds.to_parquet(str(tmp_path / f"{split}-00000-of-00001.parquet"))
    summary = filter_records(iter_hf(str(tmp_path)), tmp_path / "out" / "p.parquet", tmp_path / "out" / "r.jsonl")
    assert summary.kept == 9 and summary.without_image == 3 and summary.by_split == {"train": 4, "val": 3, "test": 2}
    row = pq.read_table(tmp_path / "out" / "p.parquet").to_pylist()[0]
    assert row["pid"] == "hf-train-000000" and Image.open(io.BytesIO(row["image"])).mode == "RGB"


def test_hf_single_parquet_file(hf_dataset, tmp_path):
    path = tmp_path / "validation-00000-of-00001.parquet"
    hf_dataset["validation"].to_parquet(str(path))
    records = list(iter_hf(str(path)))
    assert [r["pid"] for r in records] == [f"hf-val-{i:06d}" for i in range(4)]


def test_hf_shards_count_rows_across_files(hf_dataset, tmp_path):
    train = hf_dataset["train"]
    train.select(range(3)).to_parquet(str(tmp_path / "train-00000-of-00002.parquet"))
    train.select(range(3, 5)).to_parquet(str(tmp_path / "train-00001-of-00002.parquet"))
    records = list(iter_hf(str(tmp_path)))
    assert [r["pid"] for r in records] == [f"hf-train-{i:06d}" for i in range(5)]
    assert records[3]["question"] == "train question 3?"


def test_hf_save_to_disk(hf_dataset, tmp_path):
    hf_dataset.save_to_disk(str(tmp_path / "saved"))
    _check_hf_records(iter_hf(str(tmp_path / "saved")), hf_dataset)


def test_hf_missing_column_names_it(hf_dataset, tmp_path):
    hf_dataset["train"].remove_columns(["hint"]).to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    with pytest.raises(RecordError) as info:
        list(iter_hf(str(tmp_path)))
    assert info.value.field == "hint" and "column missing" in str(info.value)
    hf_dataset.remove_columns(["skill"]).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(RecordError, match="skill") as info:
        list(iter_hf(str(tmp_path / "saved")))
    assert info.value.field == "skill"


def test_hf_unknown_split_file_name(hf_dataset, tmp_path):
    hf_dataset["train"].to_parquet(str(tmp_path / "scienceqa.parquet"))
    with pytest.raises(SvrdError, match="cannot tell the split"):
        list(iter_hf(str(tmp_path / "scienceqa.parquet")))


def test_hf_local_path_not_found(tmp_path):
    with pytest.raises(SvrdError, match="not found"):
        list(iter_hf(str(tmp_path / "nowhere")))
