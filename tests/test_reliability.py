"""Reliability (issue 5) on the tiny random pair: bad data through a real run, half precision and
degenerate masks in a training step, the non-finite guards, SIGKILL and resume, damaged or foreign
checkpoints, what is unpickled and trusted, and results that a partial or changed run never
clobbers. Each README "What happens when" row names its test here or in test_data/test_losses."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dakd.train as T
from dakd import data as D
from dakd import models as M
from dakd import pipeline
from dakd.models import TINY_STUDENT, TINY_TEACHER, load_model
from dakd.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "data"


def _tiny(run, root, **kw):
    return get_preset("tiny", root=str(root))[run].replace(save_checkpoints=True, **kw)


def _weights(folder):
    return load_model(folder).state_dict()


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# ================================================================ bad data through a real run

GOOD = [{"instruction": f"Name a {what}.", "input": "", "output": f"{answer}."}
        for what, answer in (("fruit", "Apple"), ("colour", "Red"), ("planet", "Mars"),
                             ("metal", "Iron"), ("bird", "Robin"), ("tree", "Oak"))]
GOOD_LINES = "".join(json.dumps(r) + "\n" for r in GOOD).encode()


@pytest.fixture
def data_folder(tmp_path, monkeypatch):
    """make(train bytes) -> path of ``dolly/train.jsonl`` in a data folder that DAKD_DATA_DIR names."""
    def make(train: bytes) -> Path:
        folder = tmp_path / "data" / "dolly"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.jsonl").write_bytes(train)
        (folder / "test.jsonl").write_bytes(GOOD_LINES)
        monkeypatch.setenv("DAKD_DATA_DIR", str(tmp_path / "data"))
        return folder / "train.jsonl"
    return make


def test_samples_trained_on_equal_loaded_minus_counted_drops(data_folder, tmp_path):
    # records 0-2 empty_response (0, 1 empty), 3-5 duplicates, 6-7 long_prompt (7 over the tiny
    # preset's 64-token prompt limit), 8 long_response (cut to 96 tokens), 9-14 good
    parts = ["empty_response.jsonl", "duplicates.jsonl", "long_prompt.jsonl", "long_response.jsonl"]
    data_folder(b"".join((BAD / p).read_bytes() for p in parts) + GOOD_LINES)
    cfg = _tiny("dakd", tmp_path)
    log = T.train(cfg)
    on_disk = json.loads((Path(cfg.output_dir) / "train_log.json").read_text())
    # duplicates: 4 repeats 3, 5 repeats 2 ("Add the numbers."), 6 repeats 3 ("Name a colour.")
    assert on_disk["filter"] == {"loaded": 15, "kept": 12, "empty_response": 2, "prompt_too_long": 1,
                                 "response_truncated_away": 0, "truncated": 1, "duplicates": 3,
                                 "dropped": 3}
    e0, e1 = log["epochs"]
    assert log["num_samples"] == e0["subset_size"] == 15 - 3
    assert sorted(e0["subset_ids"]) == [i for i in range(15) if i not in (0, 1, 7)]
    assert set(e1["subset_ids"]) <= set(e0["subset_ids"]) and e1["subset_size"] == 6
    assert log["cost"]["iterations"] == math.ceil(12 / 4) + math.ceil(6 / 4)


@pytest.mark.parametrize("name, where", [
    ("not_json.jsonl", ":2: not valid JSON"),
    ("missing_output.jsonl", ":3: field 'output': missing"),
    ("missing_instruction.jsonl", ":2: field 'instruction': missing"),
    ("wrong_type.jsonl", ":2: field 'output': expected str, got int"),
    ("empty.jsonl", ": no records"),
    ("not_utf8.jsonl", ":2: not UTF-8"),
    ("blank_line_middle.jsonl", ":2: blank line inside the file"),
])
def test_bad_training_file_stops_the_run_naming_file_line_and_field(data_folder, tmp_path, name, where):
    path = data_folder((BAD / name).read_bytes())
    cfg = _tiny("sft", tmp_path)
    with pytest.raises(D.DataError) as e:
        T.train(cfg)
    assert str(e.value).startswith(f"{path}{where}")
    assert not (tmp_path / "sft" / "train_log.json").exists()
