"""The SeqKD, GKD and DistiLLM baselines of DA-KD's Tables 1-3: what they add to the one training
loop of `dakd.train` (generation, the replay buffer, the adaptive SGO schedule, the SeqKD cache).

SeqKD (Kim & Rush 2016; as run by MiniLLM/DistiLLM, github.com/jongwooko/distillm,
``scripts/*/tools/generate_data_seqkd.sh``): the teacher samples one response per training prompt
(top-k 0, top-p 1.0, temperature 1.0, at most max_length - prompt tokens), once, and the student is
fine-tuned with cross-entropy on those responses instead of the ground truth. Here the generated set
is cached as JSONL under ``seqkd_cache_dir()`` (`seqkd_records`), keyed by the teacher (name, and the
size and modification time of its weight files, so a re-trained teacher folder is regenerated),
the data set and subset, the prompt texts, the lengths and the generation settings.

GKD (Agarwal et al., ICLR 2024, "On-policy distillation of language models: learning from
self-generated mistakes"; TRL's ``GKDTrainer``): for every global batch, with probability
``student_data_fraction`` (TRL's ``lmbda``, the "student data fraction", default 0.5) the student
samples the responses to the batch's prompts (on-policy, no gradient) and the loss is the
generalized JSD(beta) between teacher and student on those tokens, the teacher scored on the
student's tokens; otherwise the same loss on the ground-truth responses (supervised KD). The coin
is drawn from the run's seeded generator. As in the paper's main runs the loss is computed at
temperature 1; ``gen_temperature`` only scales sampling (TRL uses one temperature for both).

DistiLLM (Ko et al., ICML 2024, "DistiLLM: towards streamlined distillation for large language
models"): skew KL or skew reverse KL (alpha 0.1) plus adaptive off-policy student-generated outputs
(SGO). The rule follows the authors' ``finetune.py`` (github.com/jongwooko/distillm):

- the SGO probability phi starts at ``sgo_init_prob`` (their ``--init-threshold 0.0``); the student's
  validation loss (response cross-entropy, nats per token) is measured before training and after
  every epoch; when it is at least ``sgo_loss_eps`` (their ``--loss-eps 0.1``) above the last
  reference value, phi grows by ``sgo_prob_step`` (0.1 in their code) up to ``sgo_max_prob`` (1.0)
  and the new loss becomes the reference (the reference only moves when phi grows): `AdaptiveSGO`;
- each global batch draws u ~ U[0, 1): u < phi (1 - t / T) (t optimiser steps done, T planned; their
  default "decreasing" replay ratio) or u < phi while the replay buffer is not full: the student
  generates fresh responses, which are pushed into the FIFO buffer (their ``--capacity 1000``) and
  trained on; else u < phi: a batch is drawn uniformly without replacement from the buffer; else
  the ground truth: `sgo_batch_source`.
- Validation records: the first ``sgo_val_samples`` of the data set's dev split (Dolly dev, as
  DistiLLM's ``--dev-num 1000``; SAMSum's validation file); GSM8K has no dev split, so its last
  ``sgo_val_samples`` training records are held out of the DistiLLM run's training pool.

All generations are ancestral samples (top-k 0, top-p 1.0, ``gen_temperature``) that stop at EOS or
after ``gen_max_new_tokens`` tokens (and never pass ``max_length`` in all); the response mask covers
every generated token up to and including the first EOS. Under FSDP2 or DeepSpeed ZeRO-3 the
student's weights are sharded: every forward of ``generate`` gathers them from all processes, so
generation runs with ``synced_gpus`` and a process whose share of a batch is empty generates for a
stand-in prompt too (`dakd.methods.sources`; tested on the CPU in tests/test_strategies.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import data
from .decoding import generate_ids, left_pad, protocol_generation_config
from .models import cache_dir, resolve_model, weight_files

BATCH_SOURCES = ("fresh", "replay", "ground_truth")


def cut_at_eos(ids: list[int], eos_token_id: int) -> list[int]:
    """``ids`` up to and including the first ``eos_token_id``; all of it when there is none (the
    response hit the token limit). Padding after EOS is dropped, so pad == eos is harmless."""
    return ids[:ids.index(eos_token_id) + 1] if eos_token_id in ids else list(ids)


@torch.no_grad()
def sample_responses(model, prompts: list[list[int]], pad_token_id: int, eos_token_id: int,
                     max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                     batch_size: int | None = None, max_total_length: int | None = None,
                     synced_gpus: bool = False) -> list[list[int]]:
    """Sample one response per prompt with ``model.generate`` (transformers), in prompt order.

    Ancestral sampling (top-k 0, top-p 1.0, ``temperature``, no other setting: the checkpoint's
    ``generation_config`` is not used, `dakd.decoding`), KV cache on; prompts are sorted by
    length and left-padded per batch (a decoder-only model continues from the last position). The
    torch RNG is forked and seeded with ``seed``, so the call is a function of its arguments and
    leaves the caller's random state untouched.

    Args:
        prompts: token ids of each prompt (no padding), any lengths >= 1.
        max_new_tokens: at most this many new tokens per response (>= 1).
        batch_size: prompts per ``generate`` call; None: all at once.
        max_total_length: if given, a response is also cut so that prompt + response fits it.

    Returns:
        list of generated token ids per prompt (ints), up to and including the first EOS
        (`cut_at_eos`); no padding.

    Raises:
        ValueError: an empty prompt, or max_new_tokens < 1.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("cannot generate from an empty prompt")
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    bs = batch_size or max(len(prompts), 1)
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                width = max(len(prompts[i]) for i in idx)
                new = max_new_tokens
                if max_total_length is not None:
                    new = min(new, max(max_total_length - min(len(prompts[i]) for i in idx), 1))
                ids, attn = left_pad([prompts[i] for i in idx], pad_token_id)
                # the whole decoding from the protocol, nothing from the checkpoint (issue 13)
                gcfg = protocol_generation_config(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                                  max_new_tokens=new, pad_token_id=pad_token_id,
                                                  eos_token_id=eos_token_id)
                gen = generate_ids(model, ids.to(device), attn.to(device), gcfg, synced_gpus=synced_gpus)
                for r, i in enumerate(idx):
                    resp = cut_at_eos(gen[r, width:].tolist(), eos_token_id)
                    if max_total_length is not None:
                        resp = resp[:max(max_total_length - len(prompts[i]), 0)]
                    out[i] = resp
    finally:
        model.train(was_training)
    return out


def generated_examples(prompt_examples: list[dict], generations: list[list[int]]) -> list[dict]:
    """Training examples whose responses are ``generations`` instead of the ground truth.

    Each result keeps the prompt (``input_ids[:prompt_length]``), ``sample_id`` and ``index`` of its
    prompt example and has ``input_ids`` = prompt + generated ids, so `data.DistillCollator` pads it
    exactly like a ground-truth example (right padding, masks from lengths) and its response mask
    covers exactly the generated tokens (with their EOS when generation stopped there).

    Raises:
        ValueError: the lists differ in length, or a generation is empty.
    """
    if len(prompt_examples) != len(generations):
        raise ValueError(f"{len(prompt_examples)} prompts but {len(generations)} generations")
    out = []
    for e, g in zip(prompt_examples, generations):
        if not g:
            raise ValueError(f"empty generation for sample {e.get('sample_id')}")
        p = e["input_ids"][:e["prompt_length"]]
        out.append({"input_ids": list(p) + list(g), "prompt_length": len(p), "sample_id": e["sample_id"],
                    "index": e["index"]})
    return out


def build_generated_batch(prompts: list[list[int]], generations: list[list[int]], pad_token_id: int,
                          sample_ids: list[int] | None = None) -> dict:
    """A batch from prompt ids and generated ids, padded by `data.DistillCollator`'s conventions.

    Returns:
        the collator's dict: ``input_ids`` [B, T] long (right-padded with ``pad_token_id``),
        ``attention_mask`` [B, T] long, ``response_mask`` [B, T] bool (True on the generated tokens
        including a final EOS, False on prompt and padding), ``index`` and ``sample_id`` [B] long.

    Raises:
        ValueError: as `generated_examples`, or an empty batch.
    """
    ids = sample_ids if sample_ids is not None else list(range(len(prompts)))
    prompt_examples = [{"input_ids": list(p), "prompt_length": len(p), "sample_id": s, "index": i}
                       for i, (p, s) in enumerate(zip(prompts, ids))]
    return data.DistillCollator(pad_token_id)(generated_examples(prompt_examples, generations))


class ReplayBuffer:
    """FIFO buffer of student-generated examples (DistiLLM's off-policy replay buffer).

    Holds at most ``capacity`` examples (dicts as `generated_examples` returns); pushing into a full
    buffer drops the oldest ones. DistiLLM keeps one buffer per process (``--capacity 1000``).

    Raises:
        ValueError: capacity < 1.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: deque = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        """True once the buffer holds ``capacity`` examples."""
        return len(self.items) >= self.capacity

    def push(self, examples: list[dict]) -> None:
        """Append examples at the new end; the oldest fall out beyond ``capacity``."""
        self.items.extend(examples)

    def sample(self, k: int, generator: torch.Generator) -> list[dict]:
        """``k`` distinct examples drawn uniformly without replacement (seeded by ``generator``).

        Raises:
            ValueError: k < 1 or k larger than the buffer.
        """
        if not 1 <= k <= len(self.items):
            raise ValueError(f"cannot sample {k} examples from a buffer of {len(self.items)}")
        idx = torch.randperm(len(self.items), generator=generator)[:k].tolist()
        return [self.items[i] for i in idx]

    def state_dict(self) -> dict:
        """Capacity and items (plain ints and lists), for a checkpoint."""
        return {"capacity": self.capacity, "items": list(self.items)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` output.

        Raises:
            ValueError: the saved capacity differs from this buffer's.
        """
        if state["capacity"] != self.capacity:
            raise ValueError(f"saved buffer capacity {state['capacity']} != {self.capacity}")
        self.items = deque(state["items"], maxlen=self.capacity)


@dataclass
class AdaptiveSGO:
    """DistiLLM's adaptive SGO probability (the authors' ``finetune.py``; see the module docstring).

    ``prob`` is the current probability phi of training on student-generated outputs;
    ``prev_loss`` the reference validation loss (nats per token), None before the first one.
    """
    prob: float = 0.0
    step: float = 0.1
    eps: float = 0.1
    max_prob: float = 1.0
    prev_loss: float | None = None

    def update(self, val_loss: float) -> float:
        """Take one validation loss (nats per token) and return the new phi. The first loss only
        sets the reference; a later one raises phi by ``step`` (capped at ``max_prob``) when it is
        >= reference + ``eps``, and then becomes the reference.

        Raises:
            ValueError: a loss that is not finite.
        """
        if not float("-inf") < val_loss < float("inf"):
            raise ValueError(f"validation loss must be finite, got {val_loss}")
        if self.prev_loss is None:
            self.prev_loss = float(val_loss)
        elif val_loss >= self.prev_loss + self.eps:
            # rounded so that 0.1 + 0.1 + 0.1 logs as 0.3
            self.prob = round(min(self.prob + self.step, self.max_prob), 12)
            self.prev_loss = float(val_loss)
        return self.prob

    def to_dict(self) -> dict:
        """The fields as a dict (JSON-ready), for checkpoints and logs."""
        return asdict(self)


def sgo_probabilities(val_losses: list[float], init: float = 0.0, step: float = 0.1, eps: float = 0.1,
                      max_prob: float = 1.0) -> list[float]:
    """phi after each validation loss of a sequence (`AdaptiveSGO.update`); element 0 (the loss
    before training) always gives ``init``. Element e is the SGO probability of epoch e."""
    s = AdaptiveSGO(prob=init, step=step, eps=eps, max_prob=max_prob)
    return [s.update(v) for v in val_losses]


def sgo_batch_source(u: float, prob: float, progress: float, buffer_full: bool) -> str:
    """Where DistiLLM takes one batch's responses from (the authors' ``finetune.py``).

    Args:
        u: a uniform draw in [0, 1).
        prob: the SGO probability phi.
        progress: optimiser steps done / steps planned, in [0, 1].
        buffer_full: whether the replay buffer is full.

    Returns:
        "fresh" (the student generates; the generations go into the buffer) when u < phi (1 -
        progress), or u < phi while the buffer is not full; "replay" (a batch from the buffer) for
        the rest of u < phi; else "ground_truth".
    """
    if u < prob * (1.0 - progress) or (u < prob and not buffer_full):
        return "fresh"
    if u < prob:
        return "replay"
    return "ground_truth"


# ---------------------------------------------------------------- SeqKD data

def seqkd_cache_dir() -> Path:
    """Folder of cached SeqKD data sets: ``dakd.models.cache_dir() / "seqkd"``."""
    return cache_dir() / "seqkd"


def teacher_fingerprint(name: str) -> dict:
    """What identifies a teacher's weights for the SeqKD cache: the name, and for a local folder its
    resolved path with the name, size (bytes) and modification time (ns) of every weight file, so
    retraining a teacher into the same folder (a teacher SFT run) invalidates the cache."""
    path = Path(resolve_model(name))
    fp: dict = {"teacher": str(name)}
    if path.is_dir():
        fp |= {"path": str(path.resolve()), "weights": weight_files(path)}
    return fp


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, positions: list[int]) -> dict[int, str] | None:
    """{sample_id: teacher response} from a cache file holding exactly ``positions``, else None."""
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        got = {int(r["sample_id"]): r["output"] for r in rows}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if sorted(got) != sorted(positions) or len(rows) != len(positions):
        return None
    if not all(isinstance(v, str) for v in got.values()):
        return None
    return got


def seqkd_records(cfg, records: list[dict], tokenizer, load_teacher, accelerator=None,
                  out_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """The training records of a SeqKD run: ``output`` replaced by the teacher's sampled response.

    The teacher (``load_teacher()``, called only on a cache miss) samples one response per record
    whose prompt fits ``cfg.max_prompt_length`` (`data.prompts_for_generation`), with
    `sample_responses` (seed ``cfg.seed``, ``cfg.gen_temperature``, at most
    ``cfg.gen_max_new_tokens`` and ``cfg.max_length`` in all, batches of ``cfg.eval_batch_size``);
    with several processes each samples a strided share and the shares are gathered (the text then
    depends on the number of processes). The set is written once, atomically, as JSONL to
    ``seqkd_cache_dir() / <key>.jsonl`` (one line per generated record: ``sample_id`` = position in
    ``records``, ``line``, ``instruction``, ``input``, ``output`` = teacher response, ``reference`` =
    ground truth) with ``<key>.meta.json`` beside it, and copied to ``out_dir/seqkd_data.jsonl``.
    Records whose prompt is too long keep their ground truth: `data.tokenize_records` drops and
    counts them as for any run; empty responses become empty outputs it drops and counts
    (``empty_response``; ``info["empty_generation"]`` counts them separately).

    Returns:
        (records, info): records in the order of ``records``; info holds ``cache_file``,
        ``from_cache``, ``generated`` (responses), ``empty_generation``, ``generation_seconds``.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    texts, _, _, positions = data.prompts_for_generation(records, tokenizer, cfg.prompt_style, cfg.max_prompt_length)
    key_fields = {"teacher": teacher_fingerprint(cfg.teacher), "dataset": cfg.dataset,
                  "train_samples": cfg.train_samples, "seed": cfg.seed, "prompt_style": cfg.prompt_style,
                  "max_prompt_length": cfg.max_prompt_length, "max_length": cfg.max_length,
                  "gen_max_new_tokens": cfg.gen_max_new_tokens, "gen_temperature": cfg.gen_temperature,
                  "batch_size": cfg.eval_batch_size, "prompts_sha256": _sha(texts)}
    key = _sha(key_fields)[:16]
    folder = seqkd_cache_dir()
    path = folder / f"{key}.jsonl"
    t0 = time.perf_counter()
    cached = _read_cache(path, positions) if path.exists() else None
    from_cache = cached is not None
    if cached is None:
        teacher = load_teacher()
        prompt_ids = data.encode_prompts(tokenizer, texts)
        mine = list(range(rank, len(texts), world))
        gens = sample_responses(teacher, [prompt_ids[j] for j in mine], tokenizer.pad_token_id,
                                tokenizer.eos_token_id, cfg.gen_max_new_tokens, cfg.gen_temperature,
                                seed=cfg.seed, batch_size=cfg.eval_batch_size, max_total_length=cfg.max_length)
        outs = [t.strip() for t in tokenizer.batch_decode(gens, skip_special_tokens=True)]
        rows = list(zip(mine, outs))
        if world > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        cached = {positions[j]: text for j, text in rows}
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"sample_id": p, "line": records[p].get("line"),
                                 "instruction": records[p]["instruction"], "input": records[p].get("input", ""),
                                 "output": cached[p], "reference": records[p]["output"]}, ensure_ascii=False)
                     for p in positions]
            for target, text in ((path.with_suffix(".meta.json"),
                                  json.dumps(key_fields | {"num_processes": world}, indent=1)),
                                 (path, "\n".join(lines) + ("\n" if lines else ""))):
                tmp = target.with_name(target.name + f".tmp{os.getpid()}")
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, target)
        del teacher
        if accelerator is not None:
            accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    if out_dir is not None and rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(out_dir) / "seqkd_data.jsonl")
    out = [r | {"output": cached[i], "reference": r["output"]} if i in cached else r
           for i, r in enumerate(records)]
    info = {"cache_file": str(path), "from_cache": from_cache, "generated": len(positions),
            "empty_generation": sum(1 for p in positions if not cached[p].strip()),
            "generation_seconds": 0.0 if from_cache else seconds}
    return out, info
