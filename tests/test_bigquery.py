"""BigQuery as a label and cohort source (issue 24), against a real emulator (``bqemulator`` subprocess).

The session fixture ``bigquery_emulator`` starts it once (~2-3 s) and points ``$BIGQUERY_EMULATOR_HOST`` at
it; ``bq_demo`` uploads the tiny demo set with pneumo's own upload code into ``test.nih``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.errors import PneumoError
from pneumo.io.storage import StorageSettings
from tests.helpers import demo_datamodule, run_cli, tiny_overrides

TOKEN = "ya29.a0-pneumo-test-secret-token-4b2f"


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("image").reset_index(drop=True)


def _same_index(a, b) -> None:
    pd.testing.assert_frame_equal(_sorted(a.table), _sorted(b.table))
    order_a, order_b = np.argsort(a.images), np.argsort(b.images)
    np.testing.assert_array_equal(a.findings[order_a], b.findings[order_b])


def test_table_index_and_split_equal_the_csv_ones(bq_demo: str, demo_root: Path) -> None:
    from pneumo.data.bigquery import read_table_index
    from pneumo.nih.index import NIHLabelIndex

    table_index, record = read_table_index(f"bq://{bq_demo}.labels", StorageSettings())
    csv_index = NIHLabelIndex.from_csv(str(demo_root / "Data_Entry_2017.csv"))
    _same_index(table_index, csv_index)
    assert record["rows"] == len(csv_index) and record["modified"]
    assert table_index.summary() | {"source": None} == csv_index.summary() | {"source": None}

    lists = {"train_val": f"bq://{bq_demo}.train_val_list", "test": f"bq://{bq_demo}.test_list"}
    for split_lists in (None, lists):  # the official lists as files, then as tables
        bq = demo_datamodule(
            demo_root,
            labels_url=f"bq://{bq_demo}.labels",
            **({"split_lists": split_lists} if split_lists else {}),
        )
        csv = demo_datamodule(demo_root)
        a, b = bq.planned_split().as_dict(), csv.planned_split().as_dict()
        assert {k: v.tolist() for k, v in a.items()} == {k: v.tolist() for k, v in b.items()}
    seeded = [
        demo_datamodule(demo_root, labels_url=url, split_lists=None)
        for url in (f"bq://{bq_demo}.labels", str(demo_root / "Data_Entry_2017.csv"))
    ]
    assert [s.tolist() for s in seeded[0].planned_split().as_dict().values()] == [
        s.tolist() for s in seeded[1].planned_split().as_dict().values()
    ]


def test_cohort_query_with_parameters_is_the_pandas_selection(
    bq_demo: str, demo_root: Path, tmp_path: Path
) -> None:
    from pneumo.reporting.model_card import card_markdown, data_fields

    query = f"SELECT image_index FROM `{bq_demo}.labels` WHERE view_position = @view"
    dm = demo_datamodule(demo_root, labels_url=f"bq://{bq_demo}.labels",
                         cohort={"query": query, "params": {"view": "PA"}, "maximum_bytes_billed": 10**9})  # fmt: skip
    dm.split = dm.planned_split()
    raw = pd.read_csv(demo_root / "Data_Entry_2017.csv", dtype=str)
    expected = sorted(raw.loc[raw["View Position"] == "PA", "Image Index"])
    assert 0 < len(expected) < len(raw)
    assert sorted(dm.index.images.tolist()) == expected
    assert sorted(np.concatenate(list(dm.split.as_dict().values())).tolist()) == expected

    fields = data_fields(dm)
    assert fields["cohort"]["query"] == query and fields["cohort"]["params"] == {"view": "PA"}
    assert (
        fields["cohort"]["rows"] == len(expected) and fields["cohort"]["tables_modified"][f"{bq_demo}.labels"]
    )
    assert fields["labels"]["table"]["rows"] == len(raw)
    text = card_markdown({"data": fields}, None)
    assert query in text and "{'view': 'PA'}" in text
    written = pd.read_csv(dm.cohort.write_csv(tmp_path))
    assert written["image_index"].tolist() == expected


def test_bytes_limit_refuses_above_the_estimate(bq_demo: str, demo_root: Path) -> None:
    from pneumo.io.bigquery import BigQueryError, BigQuerySource, check_bytes

    check_bytes(1_000, 1_000, "q")  # at the limit: runs
    check_bytes(1_000, None, "q")  # no limit
    with pytest.raises(BigQueryError, match=r"would scan 1,001 bytes .*maximum_bytes_billed=1,000"):
        check_bytes(1_001, 1_000, "data.cohort.query")
    # The emulator's estimate (it reports 0 bytes) passes any limit, and the job runs with the limit set.
    estimate, _ = BigQuerySource(StorageSettings(), "test").dry_run(
        f"SELECT image_index FROM `{bq_demo}.labels`", {}, "q"
    )
    assert estimate == 0
    dm = demo_datamodule(demo_root, labels_url=f"bq://{bq_demo}.labels",
                         cohort={"query": f"SELECT image_index FROM `{bq_demo}.labels`", "maximum_bytes_billed": 1})  # fmt: skip
    assert len(dm.planned_split().train) > 0 and dm.cohort.maximum_bytes_billed == 1


def test_every_error_is_one_line_naming_what_failed(bq_demo: str, demo_root: Path) -> None:
    from pneumo.io.bigquery import BigQuerySource, parse_table_url

    # A table lacking a required column, made with pneumo's own upload code.
    frame = pd.DataFrame({"image_index": ["00000001_000.png"], "finding_labels": ["No Finding"]})
    BigQuerySource(StorageSettings(), "test").load_frame(
        frame,
        parse_table_url("bq://test.nih.partial"),
        [("image_index", "STRING"), ("finding_labels", "STRING")],
        "t",
    )
    labels = f"`{bq_demo}.labels`"
    cases = {
        "table not found": ({"labels_url": "bq://test.nih.nope"}, r"table test\.nih\.nope not found"),
        "dataset not found": ({"labels_url": "bq://test.nodata.labels"}, r"dataset test\.nodata not found"),
        "permission denied": (
            {"cohort": {"query": "SELECT image_index FROM `x.nih.labels`"}},
            r"permission denied \(Access Denied.*roles/bigquery",
        ),
        "syntax error": (
            {"cohort": {"query": f"SELEC image_index FROM {labels}"}},
            r"BigQuery refused it: Syntax error: .*SELEC.* at \[1:",
        ),
        "no images": (
            {
                "cohort": {
                    "query": f"SELECT image_index FROM {labels} WHERE view_position = @v",
                    "params": {"v": "LL"},
                }
            },
            r"with params \{'v': 'LL'\} returned no images",
        ),
        "missing column": (
            {"labels_url": "bq://test.nih.partial"},
            r"lacks column\(s\) \['follow_up', 'patient_id', 'patient_age', 'patient_gender', 'view_position'\]",
        ),
        "malformed URL": (
            {"labels_url": "bq://nih.labels"},
            r"data\.labels_url=bq://nih\.labels: not a BigQuery table URL",
        ),
        "result without image_index": (
            {"cohort": {"query": f"SELECT patient_id FROM {labels}"}},
            r"lacks column 'image_index'",
        ),
    }
    for name, (overrides, pattern) in cases.items():
        with pytest.raises(PneumoError, match=pattern) as caught:
            demo_datamodule(demo_root, **overrides).planned_split()
        assert "\n" not in str(caught.value), name


def test_cli_error_exits_2_without_traceback_or_token(bq_demo: str, tmp_path: Path) -> None:
    """One subprocess: an SQL error from the emulator is one line (the server's message), exit 2, no
    traceback, and the token in the environment appears nowhere."""
    proc = run_cli(["-m", "pneumo.data.bigquery", "dry-run", "--query", "SELEC image_index FROM `test.nih.labels`"],
                   env={"PNEUMO_GCS_TOKEN": TOKEN})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "Syntax error" in proc.stderr and TOKEN not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_train_from_a_table_splits_as_the_csv_run(
    bq_demo: str, demo_root: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """``python train.py data.labels_url=bq://test.nih.labels`` trains and tests; the sha256 of its split
    image lists equal those of the CSV run (``tiny_ckpt``, same demo set and overrides); no token anywhere."""
    import torch

    proc = run_cli(["train.py", *tiny_overrides(demo_root, tmp_path), f"data.labels_url=bq://{bq_demo}.labels",
                    "logger=none", "callbacks.lr_monitor=null", "callbacks.gradcam_overlay=null",
                    f"hydra.run.dir={tmp_path}/run"], env={"PNEUMO_GCS_TOKEN": TOKEN})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = (tmp_path / "run" / "model_card.md").read_text()
    csv_card = torch.load(tiny_ckpt, map_location="cpu", weights_only=False)["model_card"]["data"]
    for name, counts in csv_card["splits"].items():
        assert counts["sha256"] in card, name
    assert f"bq://{bq_demo}.labels" in card
    outputs = [proc.stdout, proc.stderr] + [
        p.read_text(errors="ignore")
        for p in (tmp_path / "run").rglob("*")
        if p.is_file() and p.suffix in (".md", ".yaml", ".log", ".json", ".csv")
    ]
    assert not any(TOKEN in text for text in outputs)
    # explain of that checkpoint reads the table as training did (labels, the references' index), and the
    # split it rebuilds has the recorded sha256s (issue 25's data-identity check over a bq:// source)
    from pneumo.pipelines.explain import ExplainSettings, explain_images

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    result = explain_images(
        ExplainSettings(str(ckpt), str(tmp_path / "explain"), split="test", progress=False)
    )
    assert not result.failed and len(result.predictions) == csv_card["splits"]["test"]["images"]
    assert all(row["true_label"] in (0, 1) for row in result.predictions)


@pytest.mark.slow
def test_shipped_nih_tables_give_the_shipped_index_and_split(bigquery_emulator) -> None:
    """pneumo's default upload (NIH's shipped files) read back: the same 112,120-row index and official split."""
    from pneumo.data.bigquery import read_table_index, read_table_list, upload
    from pneumo.nih.index import NIHLabelIndex
    from pneumo.nih.shipped import shipped_path
    from pneumo.nih.splits import make_splits, read_image_list

    rows = upload("test.nih_full")
    assert (
        rows["bq://test.nih_full.labels"] == 112_120
        and rows["bq://test.nih_full.adjudicated_google2019"] == 4_376
        and rows["bq://test.nih_full.rsna_pneumonia"] == 30_123
    )
    storage = StorageSettings()
    table_index, _ = read_table_index("bq://test.nih_full.labels", storage)
    csv_index = NIHLabelIndex.from_csv(shipped_path("Data_Entry_2017_v2020.csv.gz"))
    _same_index(table_index, csv_index)
    lists = [read_table_list(f"bq://test.nih_full.{n}", storage)[0] for n in ("train_val_list", "test_list")]
    files = [read_image_list(shipped_path(n)) for n in ("train_val_list.txt", "test_list.txt")]
    a, b = make_splits(table_index, *lists), make_splits(csv_index, *files)
    assert all(np.array_equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))
    assert os.environ["BIGQUERY_EMULATOR_HOST"] == bigquery_emulator.endpoint


def test_missing_extra_is_one_line_naming_it(monkeypatch, demo_root: Path) -> None:
    """Without google-cloud-bigquery (its import blocked), a bq:// location stops at construction."""
    import sys

    monkeypatch.setitem(sys.modules, "google.cloud.bigquery", None)
    with pytest.raises(
        PneumoError, match=r'data\.labels_url=bq://p\.d\.t: .*pip install "pneumo\[bigquery\]"'
    ):
        demo_datamodule(demo_root, labels_url="bq://p.d.t")
    with pytest.raises(PneumoError, match=r"data\.cohort\.query: .*pneumo\[bigquery\]"):
        demo_datamodule(demo_root, cohort={"query": "SELECT 1"})
