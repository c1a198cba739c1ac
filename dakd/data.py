"""Instruction data: loading, prompt formats, tokenization and batching (MiniLLM protocol).

Follows the MiniLLM/DistiLLM data pipeline that DA-KD uses (METHOD.md section 5): Dolly as split
by MiniLLM (11,435 train / 1,000 dev / 500 test), the Alpaca-style prompt template, prompts over
256 tokens dropped, at most 512 tokens in all. The files are the local copies described in
`data_dir()/README.md`.

Decisions the paper leaves open, made here:
- Bad files fail loudly: every problem raises `DataError` naming file, 1-based line and field.
  Blank lines are allowed only at the end of a file. Duplicated records are kept (Dolly itself has
  a few, see the data README); they count as separate samples.
- Empty responses are not load errors; `tokenize_records` drops and counts them (`FilterReport`).
- Prompt and response are tokenized separately, so the prompt ids are exactly what generation
  sees, and the response ends with EOS (the student must learn to stop). A response cut to fit
  `max_length` loses that EOS.
- Loss masks are built from lengths, never from token values: SmolLM2 has pad == eos.
"""

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[1]

# split -> path relative to data_dir(); the eval sets are MiniLLM's `valid.jsonl` files, renamed
DATASETS = {
    "dolly": {"train": "dolly/train.jsonl", "dev": "dolly/dev.jsonl", "test": "dolly/test.jsonl"},
    "self_instruct": {"test": "self_instruct/test.jsonl"},
    "vicuna": {"test": "vicuna/test.jsonl"},
    "sinst": {"test": "sinst/test.jsonl"},  # `output` is a list of references
    "uinst": {"test": "uinst/test_11_head.jsonl"},  # first 1,270 records of MiniLLM's UnNI `11_`
}

# Where an online user would get the raw data. MiniLLM's processed splits (the files above) are not
# on the hub: microsoft/LMOps (folder `minillm`) distributes them as a tarball, `data.tar`, linked
# from its README. Mirrors marked "community" are not from the dataset authors; None: no hub copy.
HUB_NAMES = {
    "dolly": "databricks/databricks-dolly-15k",  # raw 15,011 records; MiniLLM kept 12,935
    "self_instruct": "yizhongw/self_instruct",  # config "human_eval" (252 user-oriented tasks)
    "vicuna": None,  # lm-sys/FastChat on GitHub: fastchat/eval/table/question.jsonl
    "sinst": "Muennighoff/natural-instructions",  # community; from GitHub allenai/natural-instructions
    "uinst": "mrm8488/unnatural-instructions-core",  # community; GitHub orhonovich/unnatural-instructions
}

PROMPT_STYLES = ("alpaca", "chatml")

# MiniLLM's template (tools/process_data_dolly.py), character for character; checked against the
# `prompt` field shipped with every record of the local files (tests/test_data.py)
_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


class DataError(ValueError):
    """A data file or record is malformed. The message reads ``<file>:<line>: field '<name>': ...``
    (line 1-based; the field part only where one field is at fault)."""


def data_error(path, line, problem, field=None):
    """The `DataError` (returned, for the caller to raise) for ``problem`` at ``path``:``line``
    (1-based; None for the whole file), naming ``field`` when one field is at fault."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    what = f"field '{field}': {problem}" if field else problem
    return DataError(f"{where}: {what}")


def data_dir() -> Path:
    """Root folder of the datasets.

    Order: ``$DAKD_DATA_DIR`` when set (it must exist); else ``<repo>/data``; else
    ``<repo>/../shared/data`` (the folder beside the checkout), with ``<repo>`` the folder holding
    the ``dakd`` package.

    Raises:
        FileNotFoundError: ``$DAKD_DATA_DIR`` is set to a missing folder, or no candidate exists.
    """
    env = os.environ.get("DAKD_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"DAKD_DATA_DIR={env!r} is not an existing folder")
        return path
    tried = [_REPO / "data", _REPO.parent / "shared" / "data"]
    for path in tried:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        "no data folder found; tried " + ", ".join(str(p) for p in tried)
        + ". Set DAKD_DATA_DIR to the folder holding dolly/, sinst/, ... (see its README.md)")


def check_str(path, line, field, value, allow_list=False):
    """Check that a record's ``field`` holds a string (or, with ``allow_list``, a non-empty list of
    strings).

    Raises:
        DataError: another type, naming the file, line and field.
    """
    if isinstance(value, str):
        return
    if allow_list and isinstance(value, list):
        if not value:
            raise data_error(path, line, "expected a non-empty list of str, got []", field)
        bad = [type(v).__name__ for v in value if not isinstance(v, str)]
        if bad:
            raise data_error(path, line, f"expected a list of str, got a list holding {bad[0]}", field)
        return
    want = "str or list of str" if allow_list else "str"
    raise data_error(path, line, f"expected {want}, got {type(value).__name__}", field)


def read_json_objects(path):
    """Yield ``(line number, dict)`` for every record of a JSONL file (line 1-based), checking the
    container only (fields are the caller's business): UTF-8, one JSON object per line, blank lines
    only at the end; a leading BOM is ignored. Used by `load_jsonl` and `dakd.tasks.load_task`.

    Raises:
        DataError: bytes that are not UTF-8, a line that is not JSON or not a JSON object, or a
            blank line followed by more records; the message names file and line.
        FileNotFoundError: `path` does not exist.
    """
    blank = None
    with open(path, "rb") as f:  # bytes, so a bad byte is reported with its line
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise data_error(path, n, f"not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1}"
                                     " of the line)") from None
            if n == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                blank = blank or n  # fine if only blank lines follow (trailing newlines)
                continue
            if blank is not None:
                raise data_error(path, blank, "blank line inside the file (only trailing blank lines "
                                         "are allowed)")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise data_error(path, n, f"not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise data_error(path, n, f"expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def load_jsonl(path, required=("instruction", "output"), allow_list_output=False) -> list[dict]:
    """Read an instruction JSONL file into normalised records, checking every line.

    Each record becomes ``{"instruction": str, "input": str ("" when absent), "output": str |
    list[str], "line": int (1-based), "file": str (path as given)}``; other fields (``prompt``,
    ``topic``, ...) are checked where known and then dropped: prompts are rebuilt by
    `format_prompt`. Duplicates are kept. Empty responses are kept (dropped later, counted).

    Args:
        required: fields every record must have.
        allow_list_output: accept ``output`` as a non-empty list of str (eval sets with several
            references, e.g. S-NI).

    Raises:
        DataError: bytes that are not UTF-8, a line that is not JSON or not a JSON object, a
            missing required field, a field of the wrong type (``instruction``, ``input``,
            ``prompt`` must be str; ``output`` str, or list of str when allowed), a blank line
            followed by more records, or a file with no records. The message names file, line and
            field.
        FileNotFoundError: `path` does not exist.
    """
    records = []
    for n, obj in read_json_objects(path):
        for key in required:
            if key not in obj:
                raise data_error(path, n, "missing", key)
        for key in ("instruction", "input", "prompt"):
            if key in obj:
                check_str(path, n, key, obj[key])
        if "output" in obj:
            check_str(path, n, "output", obj["output"], allow_list=allow_list_output)
        records.append({"instruction": obj.get("instruction", ""), "input": obj.get("input", ""),
                        "output": obj.get("output", ""), "line": n, "file": str(path)})
    if not records:
        raise data_error(path, None, "no records (the file is empty or holds only blank lines)")
    return records


def check_split(registry: dict, name: str, split: str, limit: int | None, kind: str = "dataset") -> None:
    """Validate a (name, split, limit) request against ``registry`` (name -> split -> path).

    Raises:
        ValueError: unknown name or split (the message lists the known ones), or limit < 1.
    """
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}")
    if split not in registry[name]:
        raise ValueError(f"{kind} {name!r} has no split {split!r}; it has {sorted(registry[name])}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")


def load_split(name: str, split: str, limit: int | None = None, seed: int | None = None,
               allow_list_output: bool | None = None) -> list[dict]:
    """Load ``data_dir()/DATASETS[name][split]`` with `load_jsonl`.

    Args:
        limit: keep at most this many records (>= 1; None keeps all). With `seed` None the first
            `limit` records; otherwise a random subset drawn with ``random.Random(seed).sample``
            over record positions, returned in file order (same seed, same subset).
        allow_list_output: accept list-valued ``output`` (several references); None (default)
            accepts it everywhere except "train" splits.

    Raises:
        ValueError: unknown dataset or split, or limit < 1.
        DataError, FileNotFoundError: as `load_jsonl` and `data_dir`.
    """
    check_split(DATASETS, name, split, limit)
    if allow_list_output is None:
        allow_list_output = split != "train"
    records = load_jsonl(data_dir() / DATASETS[name][split], allow_list_output=allow_list_output)
    if limit is None or limit >= len(records):
        return records
    if seed is None:
        return records[:limit]
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def format_prompt(record: dict, style: str, tokenizer=None) -> str:
    """The prompt text for one record (everything before the response).

    "alpaca": MiniLLM's template (METHOD.md section 5), with the ``### Input:`` block only when
    ``input`` is non-empty. "chatml": the tokenizer's own chat template with one user turn
    (instruction, then a blank line and the input when there is one) and the assistant header
    (``add_generation_prompt``); for SmolLM2 this includes its default system prompt.

    Raises:
        ValueError: unknown style, or "chatml" without a tokenizer that has a chat template.
    """
    instruction, inp = record["instruction"], record.get("input", "")
    if style == "alpaca":
        template = _ALPACA_WITH_INPUT if inp else _ALPACA_NO_INPUT
        return template.format(instruction=instruction, input=inp)
    if style == "chatml":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt style 'chatml' needs a tokenizer with a chat template")
        content = instruction + ("\n\n" + inp if inp else "")
        return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
    raise ValueError(f"unknown prompt style {style!r}; known: {PROMPT_STYLES}")


@dataclass
class FilterReport:
    """What tokenization kept and why it dropped the rest (counts of samples).

    kept == loaded - (empty_response + prompt_too_long + response_truncated_away). Not drops:
    `truncated` counts kept samples whose response was cut to fit max_length; `duplicates` counts
    kept samples whose token ids equal an earlier kept sample's (kept, as MiniLLM's Dolly split
    is used as it is: it holds 11 such records).
    """
    loaded: int = 0
    kept: int = 0
    empty_response: int = 0
    prompt_too_long: int = 0
    response_truncated_away: int = 0
    truncated: int = 0
    duplicates: int = 0

    @property
    def dropped(self) -> int:
        return self.empty_response + self.prompt_too_long + self.response_truncated_away

    def to_dict(self) -> dict:
        """Every count by name plus ``dropped`` (their sum), as written to a run's ``filter``."""
        return {**asdict(self), "dropped": self.dropped}

    def __str__(self) -> str:
        return (f"loaded {self.loaded}, kept {self.kept}, dropped {self.dropped} "
                f"(empty response {self.empty_response}, prompt too long {self.prompt_too_long}, "
                f"response truncated away {self.response_truncated_away}), "
                f"truncated {self.truncated}, duplicates {self.duplicates}")


def special_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before a text by itself (``add_special_tokens=True``): ``[bos]`` for
    Llama-2-style tokenizers, ``[]`` for SmolLM2 and Qwen2.5."""
    probe = "x"
    with_special = tokenizer(probe, add_special_tokens=True).input_ids
    plain = tokenizer(probe, add_special_tokens=False).input_ids
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i:i + len(plain)] == plain:
            return list(with_special[:i])
    return []


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of prompt texts, the one encoding every path uses (training `tokenize_records`,
    DDS, SeqKD, on-policy generation and evaluation `dakd.evaluate.generate`, issue 13).

    Each text is encoded without special tokens, then the tokenizer's own prefix
    (`special_prefix`: its BOS, if it adds one) is put in front unless the ids already start with
    it: a chat template that writes BOS as text (Llama-3, Llama-2-chat) gets one BOS, not two.
    Nothing is appended (a tokenizer that appends EOS by itself would end the prompt there).

    Returns:
        one list of int per text, in order (``[]`` for no texts).
    """
    if not texts:
        return []
    prefix = special_prefix(tokenizer)
    ids = tokenizer(list(texts), add_special_tokens=False).input_ids
    return [list(p) if not prefix or p[:len(prefix)] == prefix else prefix + list(p) for p in ids]


def tokenize_records(records, tokenizer, style, max_prompt_length=256, max_length=512):
    """Turn records into training examples, dropping and counting those that do not fit.

    Per record: an empty or whitespace-only response is dropped (empty_response); prompt ids
    (`format_prompt`, encoded by `encode_prompts`) longer than `max_prompt_length` tokens
    are dropped (prompt_too_long); response ids are the output's tokens plus ``eos_token_id``. When
    prompt + response exceeds `max_length` tokens the response is cut to fit (truncated; its EOS
    is then lost); when nothing of it is left the record is dropped (response_truncated_away). With
    max_prompt_length < max_length (as DistillConfig requires) at least one response token always
    remains, so that drop only happens when the limits are passed here directly. A kept sample
    identical to an earlier one is kept and counted (duplicates).

    Returns:
        (examples, report). Each example is ``{"input_ids": list[int] (prompt then response),
        "prompt_length": int (tokens), "sample_id": int, "index": int}``: `sample_id` is the
        record's position in `records` (dropped records leave gaps); `index` is the example's
        position in the returned list (0..N-1, what DDS scores and the updater select by).

    Raises:
        DataError: a record's ``output`` is a list (training needs a single reference).
        ValueError: unknown style (see `format_prompt`).
    """
    report = FilterReport(loaded=len(records))
    for r in records:
        if not isinstance(r["output"], str):
            raise data_error(r.get("file", "<records>"), r.get("line"),
                        "training needs a single reference, got a list", "output")
    live = [i for i, r in enumerate(records) if r["output"].strip()]
    report.empty_response = len(records) - len(live)
    # one batched call each: the Rust tokenizer is much faster on lists than record by record
    prompts = encode_prompts(tokenizer, [format_prompt(records[i], style, tokenizer) for i in live])
    responses = (tokenizer([records[i]["output"] for i in live], add_special_tokens=False).input_ids
                 if live else [])
    examples, seen = [], set()
    for i, p, resp in zip(live, prompts, responses):
        if len(p) > max_prompt_length:
            report.prompt_too_long += 1
            continue
        resp = resp + [tokenizer.eos_token_id]
        room = max_length - len(p)
        if room <= 0:
            report.response_truncated_away += 1
            continue
        if len(resp) > room:
            resp = resp[:room]
            report.truncated += 1
        key = tuple(p + resp)
        report.duplicates += key in seen
        seen.add(key)
        examples.append({"input_ids": p + resp, "prompt_length": len(p), "sample_id": i,
                         "index": len(examples)})
    report.kept = len(examples)
    return examples, report


def examples_hash(examples: list[dict]) -> str:
    """Short sha256 (16 hex digits) of tokenized examples (sample id, prompt length, token ids), in
    order: a resume, the top-k cache and CE_teacher caches must see the same samples."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e["sample_id"], e["prompt_length"], e["input_ids"]]).encode())
    return h.hexdigest()[:16]


@dataclass
class DistillCollator:
    """Right-pads a list of `tokenize_records` examples into a batch (dynamic padding).

    Returns a dict of tensors, T = the longest example (rounded up to `pad_to_multiple_of`):
    ``input_ids`` [B, T] long (padded with `pad_token_id`); ``attention_mask`` [B, T] long, 1 on
    real tokens; ``response_mask`` [B, T] bool, True on response tokens including their final EOS,
    False on prompt and padding; ``index`` [B] long; ``sample_id`` [B] long. Masks come from
    lengths, never from token values, because pad == eos for SmolLM2.
    """
    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(e["input_ids"]) for e in examples]
        T = max(lengths)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(examples)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(B, T, dtype=torch.long)
        response_mask = torch.zeros(B, T, dtype=torch.bool)
        for b, (e, n) in enumerate(zip(examples, lengths)):
            input_ids[b, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            attention_mask[b, :n] = 1
            response_mask[b, e["prompt_length"]:n] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "response_mask": response_mask,
                "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
                "sample_id": torch.tensor([e["sample_id"] for e in examples], dtype=torch.long)}


def prompts_for_generation(records, tokenizer, style, max_prompt_length=256):
    """Prompts and references for evaluation by generation (ROUGE-L against the references).

    Prompts over `max_prompt_length` tokens (counted as in `tokenize_records`) are dropped and
    counted in ``report.prompt_too_long``; nothing else is dropped (references are not checked
    for emptiness: they are never trained on).

    Returns:
        (prompt texts, reference lists, report, positions): a str ``output`` becomes
        ``[output]``; the lists are aligned and in record order; ``positions`` are the kept
        records' indices in ``records`` (ascending), so scores can be traced back to records.
    """
    report = FilterReport(loaded=len(records))
    texts = [format_prompt(r, style, tokenizer) for r in records]
    ids = encode_prompts(tokenizer, texts)
    prompts, refs, positions = [], [], []
    for i, (r, text, p) in enumerate(zip(records, texts, ids)):
        if len(p) > max_prompt_length:
            report.prompt_too_long += 1
            continue
        prompts.append(text)
        refs.append([r["output"]] if isinstance(r["output"], str) else list(r["output"]))
        positions.append(i)
    report.kept = len(prompts)
    return prompts, refs, report, positions
