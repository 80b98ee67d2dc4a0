"""Text and tabular datasets: CSV, JSON Lines and Parquet uploads through the API."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_api_rejects import assert_problem, stored_state


@pytest.fixture
def home(configure):
    return configure()


@pytest.fixture
def api(home):
    from tests.conftest import api_client

    with api_client() as client:
        yield client


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request, configure):
    """``(api, home)`` on SQLite and on PostgreSQL."""
    from tests.conftest import api_client

    if request.param == "postgres":
        home = configure(database_url=request.getfixturevalue("postgres_url"))
    else:
        home = configure()
    with api_client() as client:
        yield client, home


def upload(api, filename: str, content: bytes, name: str = "table", **columns):
    return api.post("/v1/datasets", data={"name": name, **columns},
                    files={"file": (filename, io.BytesIO(content))})


def csv_bytes(header: list[str], rows: list[list]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def parquet_bytes(columns: dict, row_group_size: int = 64) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out, row_group_size=row_group_size)
    return out.getvalue()


def all_samples(api, dataset_id: str) -> list[dict]:
    page = api.get(f"/v1/datasets/{dataset_id}/samples", params={"limit": 500}).json()
    return page["items"]


def text_rows(home, dataset: dict):
    from app.core.db import new_session
    from app.core.storage import get_blob_store
    from app.datasets.tables import Dataset
    from worker.engine.data.text import TextRows

    with new_session() as db:
        blob = db.get(Dataset, dataset["id"]).arrays_blob
    return TextRows.open(get_blob_store().path(blob))


REVIEWS = [
    ["r1", "A delight from start to finish.", "positive", "train", "alice"],
    ["r2", "Dull, and far too long.", "negative", "train", "bob"],
    ["r3", "Neither here nor there.", "neutral", "train", ""],
    ["r4", "Ünïcode, \"quotes\" and a\nnewline survive.", "positive", "train", "alice"],
    ["r5", "I walked out.", "negative", "test", "carol"],
    ["r6", "Fine.", "neutral", "test", "dave"],
]


def test_a_csv_text_dataset_keeps_its_strings_and_names_its_classes_in_sorted_order(any_db):
    api, home = any_db
    content = csv_bytes(["id", "review", "sentiment", "split", "user"], REVIEWS)
    response = upload(api, "reviews.csv", content, text_column="review",
                      label_column="sentiment", id_column="id", split_column="split",
                      subject_column="user")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["format"] == "csv" and dataset["input_shape"] == []
    assert dataset["classes"] == ["negative", "neutral", "positive"]
    assert (dataset["num_train"], dataset["num_test"]) == (4, 2)

    samples = all_samples(api, dataset["id"])
    assert [(s["id"], s["label"], s["subject"]) for s in samples] == [
        ("r1", 2, "alice"), ("r2", 0, "bob"), ("r3", 1, None), ("r4", 2, "alice")]
    with text_rows(home, dataset) as rows:
        assert rows.classes == dataset["classes"]
        assert rows.texts("train", [3, 0]) == [REVIEWS[3][1], REVIEWS[0][1]]
        texts, labels = rows.batch("test", range(2))
        assert texts == ["I walked out.", "Fine."] and labels.tolist() == [0, 1]
        batches = list(rows.iter_batches("train", batch_size=3))
        assert [b[0].tolist() for b in batches] == [[0, 1, 2], [3]]
        assert [t for b in batches for t in b[1]] == [r[1] for r in REVIEWS[:4]]
    # A text has no shape until a tokenizer gives it one: an MLP cannot be trained on it.
    refused = api.register_model(dataset["id"], b"{}", config='{"hidden": [4]}')
    assert refused.status_code == 422 and "input_shape" in refused.json()["detail"], \
        refused.text


def test_jsonl_text_without_a_split_column_is_split_by_id_and_integer_labels_sort_numerically(
        api, home):
    records = [{"text": f"message number {i}", "stars": [1, 2, 10][i % 3]} for i in range(200)]
    response = upload(api, "messages.jsonl", jsonl_bytes(records), text_column="text",
                      label_column="stars")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["classes"] == ["1", "2", "10"]  # numeric order, not "1" < "10" < "2"
    assert dataset["num_train"] + dataset["num_test"] == 200
    assert 20 <= dataset["num_test"] <= 60  # test_fraction 0.2 of the rows, by id hash
    samples = all_samples(api, dataset["id"])
    with text_rows(home, dataset) as rows:
        for row, sample in enumerate(samples):  # ids are the rows' numbers in the file
            record = records[int(sample["id"])]
            assert rows.texts("train", [row]) == [record["text"]]
            assert dataset["classes"][sample["label"]] == str(record["stars"])
    # The same rows land in the same splits on every upload.
    again = upload(api, "messages.jsonl", jsonl_bytes(records), name="again",
                   text_column="text", label_column="stars").json()
    assert [s["id"] for s in all_samples(api, again["id"])] == [s["id"] for s in samples]


def test_a_parquet_feature_table_becomes_the_float_features_an_mlp_reads(api, home):
    rng = np.random.default_rng(0)
    n = 300
    table = {"f1": rng.normal(size=n), "f2": rng.integers(0, 5, size=n).astype(np.int32),
             "f3": rng.normal(size=n).astype(np.float32), "ignored": ["x"] * n,
             "kind": rng.choice(["cat", "ant", "bee"], size=n).tolist(),
             "split": ["test" if i % 5 == 0 else "train" for i in range(n)],
             "key": [f"row-{i}" for i in range(n)]}
    response = upload(api, "animals.parquet", parquet_bytes(table), label_column="kind",
                      feature_columns="f1, f2,f3", split_column="split", id_column="key")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["format"] == "parquet" and dataset["input_shape"] == [3]
    assert dataset["classes"] == ["ant", "bee", "cat"]
    assert (dataset["num_train"], dataset["num_test"]) == (240, 60)

    from app.core.db import new_session
    from app.core.storage import get_blob_store
    from app.datasets.tables import Dataset
    from worker.engine.data.arrays import DatasetArrays

    with new_session() as db:
        arrays = DatasetArrays.load(get_blob_store().path(db.get(Dataset, dataset["id"])
                                                          .arrays_blob))
    train = [i for i in range(n) if i % 5]
    expected = np.stack([table["f1"], table["f2"], table["f3"]], axis=1).astype(np.float32)
    assert arrays.x_train.dtype == np.float32
    np.testing.assert_array_equal(arrays.x_train, expected[train])
    assert arrays.ids_train == [f"row-{i}" for i in train]
    assert [arrays.classes[y] for y in arrays.y_train] == [table["kind"][i] for i in train]
    np.testing.assert_allclose(arrays.mean, expected[train].mean(0), rtol=1e-5)


def test_a_csv_feature_table_uses_every_other_column_by_default(api):
    rows = [[i, i * 0.5, -i, "b" if i % 2 else "a", "train" if i < 8 else "test"]
            for i in range(10)]
    response = upload(api, "t.csv", csv_bytes(["x", "y", "z", "label", "split"], rows),
                      split_column="split")
    assert response.status_code == 201, response.text
    assert response.json()["input_shape"] == [3]


def _features_csv(value: str = "1.5") -> bytes:
    rows = [[f"{i}", f"{i / 3}", "a" if i % 2 else "b", "train" if i < 6 else "test"]
            for i in range(8)]
    rows[3][1] = value
    return csv_bytes(["x", "y", "label", "split"], rows)


def _text_csv(text: str = "fine", split: str = "train", label: str = "a") -> bytes:
    rows = [["hello", "a", "train"], ["world", "b", "train"], ["again", "a", "test"],
            [text, label, split]]
    return csv_bytes(["body", "label", "split"], rows)


TEXT = {"text_column": "body", "split_column": "split"}
FEATURES = {"split_column": "split"}

# case -> (filename, content, form fields, settings, detail fragments, column)
HOSTILE = {
    "missing column": ("t.csv", _text_csv(), {**TEXT, "label_column": "category"}, {},
                       ["missing column", "label_column 'category'"], "category"),
    "non-numeric feature": ("t.csv", _features_csv("abc"), FEATURES, {},
                            ["feature column 'y'", "row 3", "not a number"], "y"),
    "empty feature cell": ("t.csv", _features_csv(""), FEATURES, {},
                           ["feature column 'y'", "row 3"], "y"),
    "infinite feature": ("t.csv", _features_csv("inf"), FEATURES, {},
                         ["feature column 'y'", "row 3", "not a finite"], "y"),
    "nan feature": ("t.csv", _features_csv("nan"), FEATURES, {},
                    ["feature column 'y'", "not a finite"], "y"),
    "float32 overflow": ("t.csv", _features_csv("1e39"), FEATURES, {},
                         ["feature column 'y'", "not a finite float32"], "y"),
    "empty text": ("t.csv", _text_csv("   "), TEXT, {},
                   ["text_column 'body'", "row 3 (line 5)", "empty text"], "body"),
    "too-long text": ("t.csv", _text_csv("x" * 51), TEXT, {"max_text_chars": "50"},
                      ["text_column 'body'", "row 3", "more than 50"], "body"),
    "too many classes": ("t.csv", _text_csv(label="c"), TEXT, {"max_classes": "2"},
                         ["label_column 'label'", "more than 2 distinct labels"], "label"),
    "unknown split value": ("t.csv", _text_csv(split="validation"), TEXT, {},
                            ["split_column 'split'", "row 3", "'validation'"], "split"),
    "label only in test": ("t.csv", _text_csv(split="test", label="z"), TEXT, {},
                           ["label_column 'label'", "'z' has no training row"], "label"),
    "too many rows": ("t.csv", _text_csv(), TEXT, {"max_dataset_rows": "3"},
                      ["more than 3 rows"], None),
    "line too long": ("t.csv", _text_csv("y" * 300), TEXT, {"max_row_bytes": "200"},
                      ["line 5", "longer than 200"], None),
    "ragged csv row": ("t.csv", b"body,label,split\nhi,a,train,extra\n", TEXT, {},
                       ["row 0 (line 2)", "4 fields"], None),
    "not utf-8": ("t.csv", b"body,label,split\n\xff\xfe,a,train\n", TEXT, {},
                  ["not UTF-8"], None),
    "text and features both": ("t.csv", _text_csv(), {**TEXT, "feature_columns": "label"}, {},
                               ["either text_column or feature_columns"], None),
    "a column in two roles": ("t.csv", _text_csv(), {**TEXT, "id_column": "body"}, {},
                              ["'body' is named as both"], None),
    "duplicate ids": ("t.jsonl", jsonl_bytes([{"id": "same", "t": "a", "label": "x"},
                                              {"id": "same", "t": "b", "label": "y"}]),
                      {"text_column": "t", "id_column": "id", "test_fraction": "0.01"}, {},
                      ["id_column 'id'", "row 1 (line 2)", "more than once"], None),
    "jsonl row lacking a column": ("t.jsonl", jsonl_bytes([{"t": "a", "label": "x"},
                                                           {"t": "b"}]),
                                   {"text_column": "t"}, {},
                                   ["missing column", "label_column 'label'", "row 1"],
                                   "label"),
    "jsonl line not an object": ("t.jsonl", b'{"t": "a", "label": "x"}\n[1, 2]\n',
                                 {"text_column": "t"}, {}, ["line 2", "JSON object"], None),
    "jsonl nesting bomb": ("t.jsonl", b"[" * 200_000 + b"]" * 200_000 + b"\n",
                           {"text_column": "t"}, {}, ["line 1"], None),
    "jsonl number as text": ("t.jsonl", jsonl_bytes([{"t": 5, "label": "x"}]),
                             {"text_column": "t"}, {}, ["text_column 't'", "a string"], "t"),
    "jsonl boolean feature": ("t.jsonl", jsonl_bytes([{"x": 1.5, "label": "a"},
                                                      {"x": True, "label": "b"}]), {}, {},
                              ["feature column 'x'", "row 1 (line 2)", "not a number"], "x"),
    "parquet text feature": ("t.parquet", parquet_bytes({"f": ["1", "2"], "label": ["a", "b"]}),
                             {"feature_columns": "f"}, {},
                             ["feature column 'f'", "integer or float"], "f"),
    "parquet null label": ("t.parquet", parquet_bytes({"f": [1.0, 2.0, 3.0],
                                                       "label": ["a", None, "b"]}),
                           {}, {}, ["label_column 'label'", "row 1", "null"], "label"),
    "parquet too many rows": ("t.parquet", parquet_bytes({"f": list(range(50)),
                                                          "label": ["a", "b"] * 25}),
                              {}, {"max_dataset_rows": "10"}, ["50 rows, more than 10"], None),
    "pickle posing as parquet": ("t.parquet", b"\x80\x04\x95" + b"x" * 100, {}, {},
                                 ["not a readable Parquet file"], None),
    "columns for an npz": ("d.npz", b"PK\x05\x06" + b"\0" * 18, {"label_column": "y"}, {},
                           ["column fields apply to csv, jsonl, parquet"], None),
    "empty file": ("t.csv", b"", TEXT, {}, ["empty"], None),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_tables_get_a_422_naming_the_column_and_store_nothing(configure, case):
    from tests.conftest import api_client

    filename, content, fields, settings, fragments, column = HOSTILE[case]
    home = configure(**settings)
    with api_client() as api:
        before = stored_state(home)
        response = upload(api, filename, content, name="evil", **fields)
        body = assert_problem(response, 422, *fragments)
        if column is not None:
            assert body["column"] == column, body
        assert stored_state(home) == before


def test_an_upload_over_the_size_cap_is_refused_before_it_is_decoded(configure):
    from tests.conftest import api_client

    home = configure(max_archive_bytes="100")
    with api_client() as api:
        before = stored_state(home)
        response = upload(api, "t.csv", _text_csv("z" * 200), **TEXT)
        assert_problem(response, 422, "more than 100")
        assert stored_state(home) == before


def test_text_erasure_empties_the_rows_and_rewrites_the_upload(tmp_path):
    """What erasure does to a text table once every model forgot some rows: the stored
    upload loses them, the decoded texts are emptied, row numbers stay."""
    from worker.engine.data.formats import TableColumns, load_dataset_file
    from worker.engine.data.rewrite import rewrite_without
    from worker.engine.data.text import TextRows, erase_text_rows

    for name, content in (("r.csv", csv_bytes(["id", "review", "sentiment", "split", "user"],
                                              REVIEWS)),
                          ("r.jsonl", jsonl_bytes([dict(zip(["id", "review", "sentiment",
                                                             "split", "user"], r, strict=True))
                                                   for r in REVIEWS])),
                          ("r.parquet", parquet_bytes({k: [r[i] for r in REVIEWS] for i, k in
                                                       enumerate(["id", "review", "sentiment",
                                                                  "split", "user"])}))):
        source = tmp_path / name
        source.write_bytes(content)
        columns = TableColumns(label="sentiment", text="review", id="id", split="split",
                               subject="user")
        decoded = tmp_path / f"{name}.safetensors"
        load_dataset_file(source, name, columns=columns).save(decoded)
        erased = tmp_path / f"{name}.erased"
        erase_text_rows(decoded, [1, 3], erased)
        with TextRows.open(erased) as rows:
            assert rows.texts("train", range(4)) == [REVIEWS[0][1], "", REVIEWS[2][1], ""]
            assert rows.texts("test", [0, 1]) == [REVIEWS[4][1], REVIEWS[5][1]]
            assert list(rows.ids_train) == ["r1", "r2", "r3", "r4"]
            assert list(rows.subjects_train) == ["alice", None, None, None]
            assert rows.y_train.tolist() == [2, 0, 1, 2]
            table = rows.table
        rewritten = tmp_path / f"rewritten-{name}"
        rewrite_without(source, name.split(".")[1], {"r4", "r5"}, rewritten, table)
        again = load_dataset_file(rewritten, name, columns=columns)
        # r5 is a test row, not a sample: only training rows are erased.
        assert again.ids_train == ["r1", "r2", "r3"] and len(again.y_test) == 2


@pytest.mark.slow
def test_a_tabular_dataset_is_unlearned_end_to_end_with_an_mlp(api, home, tmp_path):
    """A CSV of numeric features and string labels, an MLP trained on it, a deletion request
    at the default method: the job succeeds, and the erased rows leave the stored upload."""
    import torch
    from safetensors.torch import save

    from worker.engine.architectures import build_model
    from worker.engine.data.formats import TableColumns, load_dataset_file
    from worker.engine.training import TrainingRecipe, train

    rng = np.random.default_rng(1)
    names = ["setosa", "versicolor", "virginica"]
    centres = rng.normal(scale=3.0, size=(3, 6))
    rows = []
    for i in range(900):
        k = i % 3
        x = centres[k] + rng.normal(size=6)
        rows.append([f"s{i:04d}", *(f"{v:.5f}" for v in x), names[k],
                     "test" if i % 6 == 0 else "train"])
    header = ["sample", *(f"x{j}" for j in range(6)), "species", "split"]
    content = csv_bytes(header, rows)
    fields = {"label_column": "species", "id_column": "sample", "split_column": "split"}
    response = upload(api, "flowers.csv", content, **fields)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["classes"] == names and dataset["input_shape"] == [6]

    path = tmp_path / "flowers.csv"
    path.write_bytes(content)
    arrays = load_dataset_file(path, path.name, columns=TableColumns(
        label="species", id="sample", split="split"))
    torch.manual_seed(0)
    model = build_model("mlp", {"num_classes": 3, "input_shape": [6], "hidden": [32]})
    train(model, arrays.inputs(arrays.x_train), torch.from_numpy(arrays.y_train),
          TrainingRecipe(epochs=20, lr=0.05, batch_size=32), torch.device("cpu"))
    weights = save({k: v.contiguous() for k, v in model.state_dict().items()})
    registered = api.register_model(dataset["id"], weights, config='{"hidden": [32]}')
    assert registered.status_code == 201, registered.text

    samples = all_samples(api, dataset["id"])
    forget, kept = [s["id"] for s in samples[:40]], [s["id"] for s in samples[40:]]
    response = api.post(f"/v1/models/{registered.json()['id']}/deletion-requests",
                        json={"sample_ids": forget})
    assert response.status_code == 202, response.text
    job = api.wait_for_job(response.json()["job_id"])
    assert job["status"] == "succeeded" and job["method"] == "projected-gradient", job
    assert job["result_version"] == 2 and job["metrics"]["test_accuracy"] > 0.9

    from app.core.db import new_session
    from app.core.storage import get_blob_store
    from app.datasets.erasure import erase_forgotten
    from app.datasets.tables import Dataset

    erase_forgotten(dataset["id"])  # done after the job already; a second pass is a no-op
    erased = {s["id"] for s in all_samples(api, dataset["id"]) if s["erased"]}
    assert erased == set(forget)
    with new_session() as db:
        upload_blob = db.get(Dataset, dataset["id"]).upload_blob
    stored = get_blob_store().path(upload_blob).read_text()
    assert all(f"\n{sample_id}," not in stored for sample_id in forget)
    assert all(f"\n{sample_id}," in stored for sample_id in kept)
    assert stored.count("\n") == 1 + 900 - len(forget)  # the header and the other rows
