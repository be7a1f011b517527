"""Data tables: formats, splits, labels, and the errors users get for bad files."""

from __future__ import annotations

import pandas as pd
import pytest

from lmdistill.config import DataConfig
from lmdistill.data.tables import load_task_data, read_table
from lmdistill.errors import DataError

ROWS = [
    ("good film", "pos", 1.5),
    ("bad film", "neg", -2.0),
    ("great plot", "pos", 3.0),
    ("dull", "neg", -1.0),
] * 10


@pytest.fixture
def frame():
    return pd.DataFrame(ROWS, columns=["text", "label", "score"])


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_formats_read_the_same(tmp_path, frame, suffix):
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    df = read_table(path)
    assert df["text"].tolist() == frame["text"].tolist() and df["score"].tolist() == frame["score"].tolist()


def test_carved_splits_are_seeded_and_disjoint(tmp_path, frame):
    frame["text"] = [f"{t} {i}" for i, t in enumerate(frame["text"])]
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg = DataConfig(train=str(tmp_path / "t.csv"), validation_size=0.2, test_size=0.1)
    a = load_task_data(cfg, "classification", seed=3)
    b = load_task_data(cfg, "classification", seed=3)
    c = load_task_data(cfg, "classification", seed=4)
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sizes == {"train": 28, "validation": 8, "test": 4}
    assert a.splits["test"].texts == b.splits["test"].texts != c.splits["test"].texts
    seen = [set(s.texts) for s in a.splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert a.label_names == ["neg", "pos"]


def test_labels_names_integers_and_regression(tmp_path, frame):
    frame["num"] = frame["label"].map({"neg": 0, "pos": 1})
    frame.to_csv(tmp_path / "t.csv", index=False)
    d = load_task_data(DataConfig(train=str(tmp_path / "t.csv"), label_column="num"), "classification", 0)
    assert d.label_names == ["0", "1"]
    d = load_task_data(
        DataConfig(train=str(tmp_path / "t.csv"), label_names=["pos", "neg"]), "classification", 0
    )
    ex = d.splits["train"]
    assert all((lab == 0) == (t.startswith(("good", "great"))) for t, lab in zip(ex.texts, ex.labels))
    d = load_task_data(DataConfig(train=str(tmp_path / "t.csv"), label_column="score"), "regression", 0)
    assert d.label_names == [] and d.num_labels == 1 and isinstance(d.splits["test"].labels[0], float)


def test_pairs_column(tmp_path, frame):
    frame["other"] = "x"
    frame.to_csv(tmp_path / "t.csv", index=False)
    d = load_task_data(
        DataConfig(train=str(tmp_path / "t.csv"), text_pair_column="other"), "classification", 0
    )
    assert d.splits["train"].pairs[0] == "x"


def test_errors_name_the_problem(tmp_path, frame):
    with pytest.raises(DataError, match=r"data.train: file '.*nope.csv' not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_table(tmp_path / "e.csv")
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_table(tmp_path / "latin.csv")
    (tmp_path / "x.xlsx").write_text("?")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_table(tmp_path / "x.xlsx")
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(
        DataError, match=r"data.label_column: column 'y' not found in the train data \(columns: text"
    ):
        load_task_data(DataConfig(train=str(tmp_path / "t.csv"), label_column="y"), "classification", 0)
    test = pd.DataFrame([("meh", "neutral")], columns=["text", "label"])
    test.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(
        DataError, match=r"label 'neutral' in the test data \(row 0\) is not among the known labels"
    ):
        load_task_data(
            DataConfig(train=str(tmp_path / "t.csv"), test=str(tmp_path / "test.csv")), "classification", 0
        )
    pd.DataFrame({"text": [], "label": []}).to_csv(tmp_path / "empty_split.csv", index=False)
    with pytest.raises(DataError, match="validation"):
        load_task_data(
            DataConfig(train=str(tmp_path / "t.csv"), validation=str(tmp_path / "empty_split.csv")),
            "classification",
            0,
        )
    with pytest.raises(DataError, match="leaves no test rows"):
        load_task_data(DataConfig(train=str(tmp_path / "t.csv"), test_size=0.01), "classification", 0)
    frame.loc[3, "score"] = float("nan")
    frame.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataError, match="regression target 'nan' in the .* data .* is not a finite number"):
        load_task_data(
            DataConfig(train=str(tmp_path / "nan.csv"), label_column="score", validation_size=0, test_size=0),
            "regression",
            0,
        )


def test_split_seed_fixes_the_carved_splits_across_run_seeds(tmp_path):
    """data.split_seed carves the same validation/test rows whatever the run seed; without it the seed decides."""
    from lmdistill.data.tables import load_frames

    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": ["a", "b"] * 100}).to_csv(path, index=False)

    def test_rows(seed: int, split_seed: int | None) -> list[str]:
        cfg = DataConfig(train=str(path), validation_size=0.1, test_size=0.2, split_seed=split_seed)
        return list(load_frames(cfg, seed)["test"]["text"])

    assert test_rows(1, 42) == test_rows(2, 42) == test_rows(42, None)
    assert test_rows(1, None) != test_rows(2, None)
