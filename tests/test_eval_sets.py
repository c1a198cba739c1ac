"""Tests for the evaluation sets (dakd.tasks): the five instruction sets of Table 1 as shipped,
SAMSum and GSM8K loading with line-numbered errors, GSM8K answer extraction, the scoring wiring of
evaluate_model for each metric, and the Table 1 layout of dakd.results."""

import json
import math
import statistics

import pytest

from dakd import data as D
from dakd import evaluate as E
from dakd import results as R
from dakd import tasks as T
from dakd.models import TINY_STUDENT, load_model


# ---------------------------------------------------------------- the sets as shipped

@pytest.mark.parametrize("name,count,list_refs", [
    ("dolly", 500, False), ("self_instruct", 242, False), ("vicuna", 80, False),
    ("sinst", 1694, True), ("uinst", 1270, False), ("samsum", 819, False), ("gsm8k", 1319, False)])
def test_every_eval_set_loads_in_full(name, count, list_refs):
    records = T.load_eval_records(name)
    assert len(records) == count
    assert all(isinstance(r["output"], list) == list_refs for r in records)
    assert records[0]["line"] == 1 and records[-1]["line"] == count


def test_only_unni_is_marked_as_a_prefix_subset():
    notes = {k: s.subset_note for k, s in T.EVAL_SETS.items()}
    assert notes.pop("uinst").startswith("prefix: first 1,270 of ~5,400 records of MiniLLM uinst/11_")
    assert set(notes.values()) == {None}
    # the long-reference filter is documented as already applied upstream, not re-applied
    assert T.EVAL_SETS["sinst"].reference_filter.startswith("none applied here")
    assert T.EVAL_SETS["uinst"].reference_filter == T.EVAL_SETS["sinst"].reference_filter


def test_samsum_records_are_instruction_records():
    r = T.load_task("samsum", "test", limit=2)[0]
    assert r["id"] == "13862856" and r["instruction"] == "Summarize this dialogue."
    assert r["input"].startswith("Hannah: Hey, do you have Betty's number?\nAmanda: Lemme check")
    assert r["output"] == "Hannah needs Betty's number but Amanda doesn't have it. She needs to contact Larry."
    prompt = D.format_prompt(r, "alpaca")
    assert "### Instruction:\nSummarize this dialogue.\n\n### Input:\nHannah: Hey" in prompt


def test_gsm8k_records_keep_the_question_alone_and_the_gold_number():
    recs = T.load_task("gsm8k", "test")
    assert recs[0]["instruction"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert recs[0]["input"] == "" and recs[0]["answer"] == 18.0
    assert recs[0]["output"].endswith("#### 18")  # verbatim, calculator annotations included
    # 14 test answers are written with thousands commas (e.g. "#### 1,450,000")
    with_commas = [r["answer"] for r in recs if "," in r["output"].rsplit("####", 1)[1]]
    assert len(with_commas) == 14 and 1_450_000.0 in with_commas and 2125.0 in with_commas


# ---------------------------------------------------------------- GSM8K extraction

@pytest.mark.parametrize("text,value", [
    ("She makes 9 * 2 = $18 every day.", 18.0),
    ("1,250 - 50 = 1,200.", 1200.0),
    ("The answer is -3.5", -3.5),
    ("5-3", 3.0),  # a minus glued to a digit is subtraction, not a sign
    ("#### 1,450,000", 1450000.0),
    ("2,3", 3.0),  # not a thousands group: two numbers
    ("no digits at all", None),
])
def test_last_number(text, value):
    assert T.last_number(text) == value


def test_gsm8k_correct_compares_as_numbers():
    assert T.gsm8k_correct("so the total is 18.00 dollars", 18.0)
    assert T.gsm8k_correct("The answer: 1,000", 1000.0)
    assert not T.gsm8k_correct("18 eggs, then 19", 18.0)  # the last number counts
    assert not T.gsm8k_correct("I do not know", 18.0)


def test_gsm8k_gold_needs_hashes():
    assert T.gsm8k_gold("a\nb\n#### 72") == 72.0
    with pytest.raises(ValueError, match="####"):
        T.gsm8k_gold("the answer is 72")


# ---------------------------------------------------------------- loading errors name file, line, field

def _data_dir_with(tmp_path, monkeypatch, rel, lines):
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setenv("DAKD_DATA_DIR", str(tmp_path))
    return path


GOOD_SAMSUM = {"id": "1", "summary": "A greets B.", "dialogue": "A: hi\nB: hello"}


@pytest.mark.parametrize("bad,field,problem", [
    ({"id": "2", "dialogue": "A: hi"}, "summary", "missing"),
    ({"id": "2", "summary": "x", "dialogue": 7}, "dialogue", "expected str, got int"),
    ({"id": 2, "summary": "x", "dialogue": "A: hi"}, "id", "expected str, got int"),
])
def test_samsum_errors_name_file_line_and_field(tmp_path, monkeypatch, bad, field, problem):
    path = _data_dir_with(tmp_path, monkeypatch, "samsum/test.jsonl", [GOOD_SAMSUM, bad])
    with pytest.raises(D.DataError) as e:
        T.load_task("samsum", "test")
    assert str(e.value) == f"{path}:2: field '{field}': {problem}"


def test_gsm8k_answer_without_hashes_is_a_data_error(tmp_path, monkeypatch):
    path = _data_dir_with(tmp_path, monkeypatch, "gsm8k/test.jsonl",
                          [{"question": "1+1?", "answer": "2\n#### 2"}, {"question": "2+2?", "answer": "4"}])
    with pytest.raises(D.DataError, match=rf"^{path}:2: field 'answer': a GSM8K answer must end in"):
        T.load_task("gsm8k", "test")


def test_task_loader_rejects_unknown_names_and_bad_lines(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown task"):
        T.load_task("xsum", "test")
    with pytest.raises(ValueError, match="no split"):
        T.load_task("gsm8k", "dev")
    with pytest.raises(ValueError, match="unknown evaluation set"):
        T.load_eval_records("mmlu")
    path = _data_dir_with(tmp_path, monkeypatch, "samsum/test.jsonl", [GOOD_SAMSUM])
    path.write_text(json.dumps(GOOD_SAMSUM) + "\n{not json\n")
    with pytest.raises(D.DataError, match=rf"^{path}:2: not valid JSON"):
        T.load_task("samsum", "test")


# ---------------------------------------------------------------- evaluate_model scores each metric

@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_STUDENT)


def _echo(answers):
    """A stand-in for evaluate.generate that answers prompt i with answers[prompt text]."""
    def fake(model, tok, prompts, seed, *a, **k):
        return [answers(p) for p in prompts]
    return fake


def test_gsm8k_is_scored_by_the_last_number_and_decoded_greedily(tiny, smol_tok, monkeypatch):
    recs = T.load_task("gsm8k", "test", limit=4)
    right = {D.format_prompt(r, "alpaca"): r for r in recs}
    seeds_seen = []

    def fake(model, tok, prompts, seed, *a, **k):
        seeds_seen.append(seed)
        # right answers for the first two questions, a wrong last number for the others
        return [f"... so {right[p]['answer']:,.0f} in all" if recs.index(right[p]) < 2
                else f"{right[p]['answer']:.0f}, or maybe 12345" for p in prompts]
    monkeypatch.setattr(E, "generate", fake)
    res = E.evaluate_model(tiny, smol_tok, "gsm8k", "alpaca", seeds=(10, 20), limit=4, max_prompt_length=512)
    assert seeds_seen == [None]  # one greedy pass whatever seeds were asked for
    assert res["metric"] == "accuracy" and res["decoding"] == "greedy" and res["max_new_tokens"] == 256
    assert res["per_prompt"] == {"greedy": [100.0, 100.0, 0.0, 0.0]}
    assert res["accuracy"] == res["score"] == 50.0 and "rougeL" not in res


def test_sinst_takes_the_best_of_its_references(tiny, smol_tok, monkeypatch):
    recs = T.load_eval_records("sinst", limit=5)
    refs = {D.format_prompt(r, "alpaca"): r["output"] for r in recs}
    monkeypatch.setattr(E, "generate", _echo(lambda p: refs[p][-1]))  # the last reference verbatim
    res = E.evaluate_model(tiny, smol_tok, "sinst", "alpaca", seeds=(10,), limit=5, max_prompt_length=1024)
    assert res["num_prompts"] == 5 and res["prompt_ids"] == [0, 1, 2, 3, 4]
    assert res["per_prompt"]["10"] == [100.0] * 5 and res["rougeL"] == pytest.approx(100.0)
    assert res["subset_note"] is None and res["reference_filter"].startswith("none applied")


def test_uinst_result_carries_its_subset_note_and_dropped_prompts_keep_their_ids(tiny, smol_tok):
    res = E.evaluate_model(tiny, smol_tok, "uinst", "alpaca", seeds=(10,), limit=6, max_new_tokens=2,
                           batch_size=6, max_prompt_length=150)
    assert res["subset_note"].startswith("prefix: first 1,270")
    # prompts of 110, 180, 133, 201, 191 and 171 tokens: records 0 and 2 fit under 150
    assert res["prompt_ids"] == [0, 2] and res["filter"]["prompt_too_long"] == 4
    records = T.load_eval_records("uinst", limit=6)
    ps, _, _, _ = D.prompts_for_generation(records, smol_tok, "alpaca", 150)
    assert [D.format_prompt(records[i], "alpaca") for i in res["prompt_ids"]] == ps
    assert len(res["per_prompt"]["10"]) == res["num_prompts"]
    assert res["rougeL"] == pytest.approx(statistics.fmean(res["per_prompt"]["10"]), abs=1e-3)


def test_samsum_uses_its_own_generation_length(tiny, smol_tok):
    res = E.evaluate_model(tiny, smol_tok, "samsum", "alpaca", seeds=(10,), limit=2, batch_size=2,
                           max_prompt_length=512)
    assert res["max_new_tokens"] == 128 and res["metric"] == "rougeL" and res["decoding"] == "sampled"
    assert 0 < res["generated_tokens"] <= 2 * 128


# ---------------------------------------------------------------- Table 1 layout

def _run(label, **scores):
    ev = {ds: {"rougeL": v, "subset_note": T.EVAL_SETS[ds].subset_note} for ds, v in scores.items()}
    return {"label": label, "eval": ev}


def test_paper_table1_by_student_and_column():
    assert R.paper_table1("Sheared-LLaMA-1.3B", "UnNI")["DA-KD"] == 36.09
    assert R.paper_table1("Qwen2.5-0.5B", "S-NI")["Teacher"] == R.paper_table1("Qwen2.5-1.5B", "S-NI")["Teacher"]
    assert R.paper_dolly("Sheared-LLaMA-1.3B")["Teacher"] == 29.61
    with pytest.raises(ValueError, match="no Table 1 rows"):
        R.paper_table1("GPT-2")
    with pytest.raises(ValueError, match="no column"):
        R.paper_table1("Sheared-LLaMA-1.3B", "SAMSum")


def test_table1_puts_paper_values_and_differences_beside_ours():
    five = dict(dolly=20.0, self_instruct=10.0, sinst=30.0, uinst=40.0, vicuna=15.0)
    runs = {"dakd": _run("DA-KD", **five), "sft": _run("SFT", dolly=22.0)}
    t = R.table1(runs)
    assert list(t.columns[:4]) == ["method", "Dolly", "Dolly paper", "Dolly diff"]
    assert "UnNI (prefix)" in t.columns and "UnNI" not in t.columns
    d = t.loc["dakd"]
    assert d["Dolly paper"] == 26.75 and d["Dolly diff"] == pytest.approx(20.0 - 26.75)
    assert d["Avg"] == pytest.approx(23.0)
    assert d["Avg paper"] == pytest.approx(26.15, abs=0.005)  # all five: the published Avg
    assert math.isnan(t.loc["sft", "Avg"]) and math.isnan(t.loc["sft", "S-NI"])
    only_dolly = R.table1({"sft": _run("SFT", dolly=22.0)})
    assert list(only_dolly.columns) == ["method", "Dolly", "Dolly paper", "Dolly diff", "Avg", "Avg paper", "Avg diff"]
    assert only_dolly.loc["sft", "Avg paper"] == 25.85


def test_full_unni_from_the_hub_is_flattened_and_filtered_as_minillm(monkeypatch):
    # online users load the whole UnNI core set by name; offline the hub is stood in for
    import datasets
    import transformers

    rows = [{"instruction": "Sort the words.", "instances": [
                {"input": "b a", "output": "a b", "constraints": "", "instruction_with_input": ""},
                {"input": "d c e", "output": " ".join(["w"] * 12), "constraints": "", "instruction_with_input": ""}]},
            {"instruction": "Count.", "instances": [
                {"input": "x", "output": " ".join(["z"] * 11), "constraints": "", "instruction_with_input": ""}]}]
    seen = {}

    def fake_load(name, split):
        seen["name"], seen["split"] = name, split
        return rows

    class WordTok:  # one token per word
        def __call__(self, text):
            return {"input_ids": text.split()}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name: WordTok())
    recs = T.load_eval_records("uinst_full")
    assert seen == {"name": "mrm8488/unnatural-instructions-core", "split": "train"}
    # the 2-token reference is filtered (< 11 tokens); instances keep their row's instruction
    assert [(r["instruction"], r["input"], r["line"]) for r in recs] == [("Sort the words.", "d c e", 2), ("Count.", "x", 3)]
    assert T.references("uinst_full", recs[0]) == [" ".join(["w"] * 12)]
    assert len(T.load_eval_records("uinst_full", limit=1)) == 1
    assert T.EVAL_SETS["uinst_full"].subset_note is None and "10,000" in T.EVAL_SETS["uinst_full"].reference_filter


def test_full_unni_offline_says_what_to_use_instead(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="offline, evaluate on 'uinst'"):
        T.load_eval_records("uinst_full")
