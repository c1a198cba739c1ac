"""Evaluation sets and their metrics: the five instruction-following sets of the paper's Table 1
(MiniLLM protocol) and the two task-specific sets of Table 2, SAMSum and GSM8K.

Every set is turned into the instruction records of `dakd.data` (``instruction``, ``input``,
``output``, ``line``, ``file``), so prompts come from the same templates (`data.format_prompt`) as
for training. What the paper leaves open for SAMSum and GSM8K (METHOD.md 6.3) is decided here:

- SAMSum (ROUGE-L of the summary, as the instruction sets): instruction ``"Summarize this
  dialogue."``, the dialogue as input, the reference summary as output; sampled like the
  instruction sets (MiniLLM protocol: T 1.0, top-p 1.0, top-k 0, one run per seed); at most 128 new
  tokens (the test summaries are one to three sentences, well under 100 tokens).
- GSM8K (zero-shot accuracy, %): the question alone is the instruction (no examples, no extra
  wording), so the prompt is the one a student distilled on GSM8K's training answers was trained
  with; greedy decoding (one run, whatever seeds are asked for: accuracy is reported for the
  model's most likely answer); at most 256 new tokens (the reference solutions stay under ~200).
  The prediction is the last number in the generated text (commas removed, an optional minus sign
  and decimals kept); it is correct when it equals, as a number, the one after ``####`` in the
  reference answer. The record's ``output`` is the reference solution verbatim (with its
  ``<<48/2=24>>`` calculator annotations) for use as a training target.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from . import data


@dataclass(frozen=True)
class EvalSpec:
    """How one evaluation set is loaded, decoded and scored.

    metric: ``"rougeL"`` (ROUGE-L F1 x 100, best reference) or ``"accuracy"`` (% exact number).
    paper_column: the column name in the paper's tables (Table 1: Dolly ... Vicuna; Table 2).
    max_new_tokens: the set's own generation length in tokens, or None where the run's
        ``max_new_tokens`` decides (the instruction sets); a run's setting caps it
        (`pipeline.evaluate_run`), a direct caller of `evaluate.evaluate_model` may override it.
    greedy: decode greedily once instead of sampling once per seed.
    subset_note: set when the local file is only part of the set the paper evaluated on.
    reference_filter: which reference-length filter applies, and whether it is applied here.
    """
    metric: str
    paper_column: str
    max_new_tokens: int | None = None
    greedy: bool = False
    subset_note: str | None = None
    reference_filter: str | None = None


_MINILLM_11 = ("none applied here: the file is MiniLLM's `11_` subset already (references of >= 11 "
               "GPT-2 tokens, METHOD.md 5), so every record is kept")
EVAL_SETS = {
    "dolly": EvalSpec("rougeL", "Dolly"),
    "self_instruct": EvalSpec("rougeL", "SelfInst"),
    "vicuna": EvalSpec("rougeL", "Vicuna"),
    "sinst": EvalSpec("rougeL", "S-NI", reference_filter=_MINILLM_11),
    "uinst": EvalSpec("rougeL", "UnNI", reference_filter=_MINILLM_11,
                      subset_note="prefix: first 1,270 of ~5,400 records of MiniLLM uinst/11_ "
                                  "(valid.jsonl, file order; not a random sample)"),
    # online only: the full UnNI core set from the hub, filtered as MiniLLM did (`load_hub_unni`)
    "uinst_full": EvalSpec("rougeL", "UnNI", reference_filter=(
        "applied here: references of >= 11 GPT-2 tokens, the first 10,000 such instances in hub order "
        "(MiniLLM's protocol; its own 10,000-record sample is not published on the hub)")),
    "samsum": EvalSpec("rougeL", "SAMSum", max_new_tokens=128),
    "gsm8k": EvalSpec("accuracy", "GSM8K", max_new_tokens=256, greedy=True),
}

# task-specific sets: split -> path under data.data_dir(), and the fields every record must have
TASK_FILES = {
    "samsum": {"train": "samsum/train.jsonl", "dev": "samsum/val.jsonl", "test": "samsum/test.jsonl"},
    "gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
}
_TASK_FIELDS = {"samsum": ("id", "summary", "dialogue"), "gsm8k": ("question", "answer")}
SAMSUM_INSTRUCTION = "Summarize this dialogue."

# an optional minus sign not glued to a preceding digit ("5-3" holds 5 and 3), digits with
# optional thousands commas, optional decimals
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def eval_spec(dataset: str) -> EvalSpec:
    """The `EvalSpec` of ``dataset``.

    Raises:
        ValueError: unknown dataset (the message lists the known ones).
    """
    if dataset not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {dataset!r}; known: {sorted(EVAL_SETS)}")
    return EVAL_SETS[dataset]


def last_number(text: str) -> float | None:
    """The last number written in ``text`` as a float (commas removed), or None if there is none.

    ``"so 1,250 - 50 = 1,200."`` gives 1200.0; ``"-3.5"`` gives -3.5; ``"5-3"`` gives 3.0.
    """
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def gsm8k_gold(answer: str) -> float:
    """The reference number of a GSM8K answer: what follows the last ``####``.

    Raises:
        ValueError: no ``####`` or no number after it.
    """
    if "####" not in answer:
        raise ValueError("a GSM8K answer must end in '#### <number>'")
    value = last_number(answer.rsplit("####", 1)[1])
    if value is None:
        raise ValueError(f"no number after '####' in {answer[-40:]!r}")
    return value


def gsm8k_correct(prediction: str, gold: float) -> bool:
    """True when the last number of ``prediction`` equals ``gold`` (relative tolerance 1e-9)."""
    pred = last_number(prediction)
    return pred is not None and math.isclose(pred, gold, rel_tol=1e-9, abs_tol=1e-9)


def load_task(name: str, split: str, limit: int | None = None) -> list[dict]:
    """Load a task-specific split as instruction records (see the module docstring for the format).

    SAMSum: ``{"instruction": SAMSUM_INSTRUCTION, "input": dialogue, "output": summary, "id": str}``;
    GSM8K: ``{"instruction": question, "input": "", "output": answer (verbatim), "answer": float
    (the number after ####)}``; both with ``line`` (1-based) and ``file``.

    Args:
        limit: keep the first ``limit`` records (>= 1; None keeps all).

    Raises:
        ValueError: unknown task or split, or limit < 1.
        DataError: a malformed line (as `data.load_jsonl`), a missing field, a field that is not a
            str, or a GSM8K answer without ``#### <number>``; the message names file, line, field.
        FileNotFoundError: the file is missing.
    """
    data.check_split(TASK_FILES, name, split, limit, kind="task")
    path = data.data_dir() / TASK_FILES[name][split]
    records = []
    for n, obj in data.read_json_objects(path):
        for key in _TASK_FIELDS[name]:
            if key not in obj:
                raise data.data_error(path, n, "missing", key)
            data.check_str(path, n, key, obj[key])
        if name == "samsum":
            rec = {"instruction": SAMSUM_INSTRUCTION, "input": obj["dialogue"], "output": obj["summary"],
                   "id": obj["id"]}
        else:
            try:
                gold = gsm8k_gold(obj["answer"])
            except ValueError as e:
                raise data.data_error(path, n, str(e), "answer") from None
            rec = {"instruction": obj["question"], "input": "", "output": obj["answer"], "answer": gold}
        records.append(rec | {"line": n, "file": str(path)})
        if limit is not None and len(records) == limit:
            break
    if not records:
        raise data.data_error(path, None, "no records (the file is empty or holds only blank lines)")
    return records


UNNI_HUB = "mrm8488/unnatural-instructions-core"  # 66,010 instructions with their instances


def load_hub_unni(limit: int | None = None, min_reference_tokens: int = 11, max_records: int = 10_000,
                  reference_tokenizer: str = "gpt2") -> list[dict]:
    """The full UnNI evaluation set for online users: Unnatural Instructions' core data from the hub
    (`UNNI_HUB`, `datasets.load_dataset`), one record per instance, with MiniLLM's filter.

    Each instance becomes ``{"instruction": the row's instruction, "input": instance input, "output":
    instance output, "line": 1-based instance count, "file": "hub:<name>"}``; instances whose output
    has fewer than ``min_reference_tokens`` tokens of ``reference_tokenizer`` (GPT-2, as MiniLLM) are
    skipped (the protocol's filter, documented in ``EVAL_SETS["uinst_full"]``); at most
    ``max_records`` (10,000, as the paper) and at most ``limit`` are kept, in hub order.

    Raises:
        RuntimeError: the hub cannot be reached (offline: use "uinst", the local prefix subset).
        ValueError: limit < 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    try:
        from datasets import load_dataset
        from transformers import AutoTokenizer

        rows = load_dataset(UNNI_HUB, split="train")
        tok = AutoTokenizer.from_pretrained(reference_tokenizer)
    except Exception as e:  # offline, or the hub refused: say what to use instead
        raise RuntimeError(f"cannot load {UNNI_HUB} or the {reference_tokenizer} tokenizer from the hub "
                           f"({type(e).__name__}: {e}); offline, evaluate on 'uinst' (the local prefix "
                           f"subset)") from e
    cap = min(max_records, limit or max_records)
    out, n = [], 0
    for row in rows:
        for inst in row["instances"]:
            n += 1
            if len(tok(inst["output"])["input_ids"]) < min_reference_tokens:
                continue
            out.append({"instruction": row["instruction"], "input": inst["input"], "output": inst["output"],
                        "line": n, "file": f"hub:{UNNI_HUB}"})
            if len(out) == cap:
                return out
    return out


def load_eval_records(dataset: str, limit: int | None = None) -> list[dict]:
    """The test records of any evaluation set, first ``limit`` of them (None: all).

    Instruction sets come from `data.load_split` (list-valued ``output`` allowed, S-NI), the
    task-specific ones from `load_task`.

    Raises:
        ValueError: unknown dataset; and as `data.load_split` / `load_task`.
        RuntimeError: "uinst_full" without the hub (`load_hub_unni`).
    """
    eval_spec(dataset)
    if dataset == "uinst_full":
        return load_hub_unni(limit)
    if dataset in TASK_FILES:
        return load_task(dataset, "test", limit)
    return data.load_split(dataset, "test", limit=limit, allow_list_output=True)


def references(dataset: str, record: dict) -> list[str] | float:
    """What a response is scored against: the list of reference texts (ROUGE-L sets) or the gold
    number (GSM8K)."""
    if eval_spec(dataset).metric == "accuracy":
        return record["answer"]
    out = record["output"]
    return [out] if isinstance(out, str) else list(out)
