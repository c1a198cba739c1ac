"""Shared test setup: offline hub, one torch thread, and the tiny model pair's tokenizer and data.

torch's default of one thread per core is much slower on the tiny tensors of these tests when the
2-core machine is also running an experiment, so the whole suite runs single-threaded.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # again as a fixture: a test module importing something that resets the thread count first
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def smol_tok():
    """The SmolLM2 tokenizer (49,152 tokens, pad == eos == 2), as the tiny models carry it."""
    from dakd.models import TINY_TEACHER, load_tokenizer
    return load_tokenizer(TINY_TEACHER)


@pytest.fixture(scope="session")
def dolly_examples(smol_tok):
    """Nine tokenized Dolly training examples of varied length (chatml, at most 160 tokens)."""
    from dakd import data
    records = data.load_split("dolly", "train", limit=12, seed=0)
    examples, _ = data.tokenize_records(records, smol_tok, "chatml", max_prompt_length=96, max_length=160)
    return examples[:9]
