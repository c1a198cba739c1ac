"""Opt-in cache of the frozen teacher's next-token distributions, cut to its top k tokens.

The teacher is frozen, so its distribution at every response position of the training set is the
same in every epoch and for every method of a preset. `build_topk_cache` runs the teacher once and
writes, per example and response position, the k most probable token ids, their log-probabilities
and the log of the remaining (tail) mass; `TopKTeacherCache` reads the file back (memory-mapped)
and hands the losses a teacher distribution without a teacher forward. This is not in the paper
(DA-KD runs the teacher every step); the default everywhere stays the exact teacher.

Reconstruction: the tail mass 1 - sum(top-k) is spread uniformly over the V - k other tokens, so the
reconstructed distribution sums to 1, gives every token a non-zero probability wherever the exact
teacher does (every loss of `dakd.losses`, reverse KL included, stays finite), and is exact when
k = V. Its error elsewhere (BDL, teacher CE and DDS at k = 16, 64, 256) is measured by
``benchmarks/teacher_cache.py``.

File format (one ``torch.save`` dict, read with ``mmap=True``): P = all response positions of all
examples, in example order then position order; ``ids`` ``[P, k]`` int32 token ids, most probable
first; ``logp`` ``[P, k]`` log-probabilities in nats, float32 by default (float16 on request:
half the file, ~1e-3 relative rounding); ``log_tail`` ``[P]`` float32, log(1 - sum of the top k)
computed as the log-sum-exp of the other V - k log-probabilities (-inf when k = V); ``offsets``
``[N + 1]`` int64 row ranges; ``sample_ids`` ``[N]`` int64; ``target_logp`` ``[P]`` float32, the
exact log-probability of the ground-truth next token (4 bytes a position, free at build time: it
makes CE_teacher and DDS exact whatever k, see `topk_response_ce`). A response position is one that
predicts a response token: position t of an example holds the distribution of token t + 1, for
t = prompt_length - 1 ... len - 2 (``response_mask[:, 1:]`` of `dakd.data.DistillCollator`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import DistillCollator
from .data import examples_hash as data_hash
from .io import save_tensor
from .models import head_size
from .losses import get_per_token_loss

FORMAT = "dakd-topk-teacher-cache/1"
_FIELDS = ("ids", "logp", "log_tail", "offsets", "sample_ids", "target_logp")


class TopKCacheError(ValueError):
    """A top-k teacher cache file is unreadable (truncated, not a torch file), is not a dakd top-k
    cache, or was written for another teacher, data set, k, vocabulary or max_length; the message
    names the file. Delete the file to rebuild it."""


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"logp_dtype must be torch.float32 or torch.float16, got {dtype}")
    return str(dtype).removeprefix("torch.")


def topk_cache_path(teacher_name: str, examples: list[dict], k: int, max_length: int | None,
                    vocab: int | None = None, logp_dtype: torch.dtype = torch.float32,
                    folder: str | Path | None = None) -> Path:
    """Where the cache of these settings lives: ``folder`` (default ``cache_dir()/"topk"``) /
    ``topk_k<k>_<hash>.pt``, the hash covering the teacher (`dakd.models.weights_fingerprint`: for a
    local folder its weight files' sizes and times too, so a teacher retrained in place gets a new
    file), `data_hash` of ``examples``, k, max_length (tokens), the vocabulary size and the log-prob
    dtype. Any change gives another file.

    Args:
        teacher_name: names the teacher weights (``train.py`` names them ``resolve_model(cfg.teacher)``).
    """
    if folder is None:
        from .models import cache_dir
        folder = cache_dir() / "topk"
    from .models import weights_fingerprint

    key = json.dumps([FORMAT, weights_fingerprint(teacher_name), data_hash(examples), k, max_length, vocab,
                      _dtype_name(logp_dtype)])
    return Path(folder) / f"topk_k{k}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _topk_rows(lp: torch.Tensor, k: int):
    """(ids [M, k], logp [M, k], log_tail [M]) of log-probabilities ``lp`` [M, V] float32."""
    top = lp.topk(k, dim=-1)
    # the tail as the log-sum-exp of the tokens outside the top k, not log(1 - sum top-k): exact
    # (no cancellation when the top k hold almost all the mass) and -inf when k = V
    rest = lp.scatter(1, top.indices, float("-inf"))
    return top.indices, top.values, torch.logsumexp(rest, dim=-1)


@torch.no_grad()
def build_topk_cache(teacher, examples: list[dict], pad_token_id: int, k: int, path: str | Path,
                     batch_size: int = 8, *, teacher_name: str = "", max_length: int | None = None,
                     vocab: int | None = None, logp_dtype: torch.dtype = torch.float32) -> Path:
    """Run ``teacher`` once over ``examples`` and write its top-k next-token distributions.

    Args:
        teacher: a causal LM (frozen; run under no_grad, in eval mode, on its own device).
        examples: `dakd.data.tokenize_records` examples; ``sample_id`` must be unique.
        k: tokens kept per position, 1 <= k <= vocab.
        path: output file (written atomically: a temporary file, then a rename).
        batch_size: examples per teacher forward (length-sorted, as `difficulty.score_dataset`).
        teacher_name, max_length: recorded in the file and checked on load (see `TopKTeacherCache`).
        vocab: the shared vocabulary V; the distribution is the softmax over logits ``[..., :vocab]``
            as the losses see it (None: the teacher head's size).
        logp_dtype: torch.float32 (default) or torch.float16 for the stored log-probabilities.

    Returns:
        ``path``. File layout: the module docstring.

    Raises:
        ValueError: k outside [1, V], duplicate sample ids, or a bad logp_dtype.
    """
    dtype_name = _dtype_name(logp_dtype)
    head = head_size(teacher)
    V = vocab or head
    if not 1 <= k <= V:
        raise ValueError(f"k must lie in [1, {V}] (the vocabulary), got {k}")
    sids = [e["sample_id"] for e in examples]
    if len(set(sids)) != len(sids):
        raise ValueError("examples have duplicate sample_id values; the cache is keyed by them")
    device = next(teacher.parameters()).device
    collate = DistillCollator(pad_token_id)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    parts: list = [None] * len(examples)
    was_training = teacher.training
    teacher.eval()
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            b = collate([examples[i] for i in idx])
            logits = teacher(input_ids=b["input_ids"].to(device),
                             attention_mask=b["attention_mask"].to(device)).logits
            mask = b["response_mask"][:, 1:].to(device)
            lp = F.log_softmax(logits[:, :-1, :V][mask].float(), dim=-1)  # [M, V]
            ids, logp, tail = _topk_rows(lp, k)
            target = lp.gather(1, b["input_ids"][:, 1:].to(device)[mask][:, None])[:, 0]
            # rows come out batch-major, position-minor: split them back per example
            counts = mask.sum(1).tolist()
            for i, a, p, t, g in zip(idx, ids.split(counts), logp.split(counts), tail.split(counts),
                                     target.split(counts)):
                parts[i] = (a.to(torch.int32).cpu(), p.to(logp_dtype).cpu(), t.float().cpu(), g.cpu())
    finally:
        teacher.train(was_training)
    lengths = torch.tensor([len(p[2]) for p in parts], dtype=torch.int64)
    obj = {"format": FORMAT, "teacher": teacher_name, "data_hash": data_hash(examples), "k": k,
           "vocab": V, "max_length": max_length, "logp_dtype": dtype_name,
           "ids": torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, k, dtype=torch.int32),
           "logp": torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, k, dtype=logp_dtype),
           "log_tail": torch.cat([p[2] for p in parts]) if parts else torch.zeros(0),
           "target_logp": torch.cat([p[3] for p in parts]) if parts else torch.zeros(0),
           "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
           "sample_ids": torch.tensor(sids, dtype=torch.int64)}
    save_tensor(obj, path)
    return Path(path)


def reconstruct(ids: torch.Tensor, logp: torch.Tensor, log_tail: torch.Tensor, vocab: int) -> torch.Tensor:
    """Dense log-probabilities from top-k rows: the top k at their log-probs, the tail mass spread
    uniformly over the V - k other tokens (log_tail - log(V - k) each).

    Args:
        ids: ``[M, k]`` integer token ids; logp: ``[M, k]`` float nats; log_tail: ``[M]`` float nats.
        vocab: V.

    Returns:
        ``[M, V]`` float32 nats; each row sums to 1 in probability (up to the stored precision).
    """
    M, k = ids.shape
    fill = log_tail.float()[:, None] - math.log(vocab - k) if k < vocab else float("-inf")
    out = torch.empty(M, vocab, dtype=torch.float32, device=logp.device)
    out[:] = fill
    return out.scatter_(1, ids.long(), logp.float())


@dataclass
class TopKRows:
    """Cached teacher rows of a batch's response positions, batch-major then position order (the
    order of ``logits[mask]`` for the shifted mask ``response_mask[:, 1:]``).

    ``ids`` ``[M, k]`` int64, ``logp`` ``[M, k]`` float32 nats, ``log_tail`` ``[M]`` float32 nats,
    ``lengths`` ``[B]`` int64 (rows per example), ``vocab`` V.
    """

    ids: torch.Tensor
    logp: torch.Tensor
    log_tail: torch.Tensor
    lengths: torch.Tensor
    vocab: int

    def dense(self) -> torch.Tensor:
        """``[M, V]`` float32 log-probabilities (`reconstruct`)."""
        return reconstruct(self.ids, self.logp, self.log_tail, self.vocab)

    def to(self, device) -> "TopKRows":
        """The same rows on ``device``."""
        return TopKRows(self.ids.to(device), self.logp.to(device), self.log_tail.to(device),
                        self.lengths, self.vocab)


class TopKTeacherCache:
    """A top-k teacher cache file opened for reading (memory-mapped: rows are read on access).

    Args:
        path: a file written by `build_topk_cache`.
        teacher_name, examples, k, max_length, vocab: when given, checked against the file (the
            examples through `data_hash`); a mismatch is a foreign file.

    Raises:
        TopKCacheError: the file is missing, truncated or not a torch file, is not a dakd top-k cache
            (format tag, fields, shapes or dtypes wrong), or was written for other settings. The
            message names the file.
    """

    def __init__(self, path: str | Path, *, teacher_name: str | None = None,
                 examples: list[dict] | None = None, k: int | None = None,
                 max_length: int | None = None, vocab: int | None = None):
        self.path = Path(path)
        try:
            obj = torch.load(self.path, mmap=True, weights_only=True, map_location="cpu")
        except Exception as e:  # truncated, empty, not a zip, not there: all unreadable
            raise TopKCacheError(f"{self.path}: unreadable top-k teacher cache ({type(e).__name__}: "
                                 f"{e}); delete it to rebuild") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise TopKCacheError(f"{self.path}: not a dakd top-k teacher cache (format {got!r}, "
                                 f"expected {FORMAT!r})")
        self._check_layout(obj)
        want = {"teacher": teacher_name, "k": k, "max_length": max_length, "vocab": vocab,
                "data_hash": data_hash(examples) if examples is not None else None}
        for field, value in want.items():
            if value is not None and obj.get(field) != value:
                raise TopKCacheError(f"{self.path}: written for {field} {obj.get(field)!r}, not "
                                     f"{value!r}; delete it to rebuild")
        self.k, self.vocab, self.teacher = obj["k"], obj["vocab"], obj["teacher"]
        self.max_length, self.logp_dtype, self.data_hash = obj["max_length"], obj["logp_dtype"], obj["data_hash"]
        self._ids, self._logp, self._tail = obj["ids"], obj["logp"], obj["log_tail"]
        self._target = obj["target_logp"]
        self._offsets = obj["offsets"].tolist()
        self._row = {sid: i for i, sid in enumerate(obj["sample_ids"].tolist())}

    def _check_layout(self, obj: dict) -> None:
        missing = [f for f in _FIELDS + ("k", "vocab") if f not in obj]
        if missing:
            raise TopKCacheError(f"{self.path}: top-k teacher cache without {missing}; delete it to rebuild")
        ids, logp, tail, off, sids, target, k = (obj[f] for f in _FIELDS + ("k",))
        P = len(tail)
        ok = (ids.dtype == torch.int32 and logp.dtype in (torch.float32, torch.float16)
              and ids.shape == logp.shape == (P, k) and tail.shape == target.shape == (P,)
              and off.shape == (len(sids) + 1,) and int(off[0]) == 0 and int(off[-1]) == P
              and bool((off[1:] >= off[:-1]).all()))
        if not ok:
            raise TopKCacheError(f"{self.path}: inconsistent top-k teacher cache (ids {tuple(ids.shape)} "
                                 f"{ids.dtype}, logp {tuple(logp.shape)} {logp.dtype}, log_tail "
                                 f"{tuple(tail.shape)}, {len(sids)} samples, k {k}); delete it to rebuild")

    def __len__(self) -> int:
        return len(self._row)

    def num_rows(self, sample_id: int) -> int:
        """Response positions cached for ``sample_id`` (its response length in tokens)."""
        i = self._index(sample_id)
        return self._offsets[i + 1] - self._offsets[i]

    def _index(self, sample_id: int) -> int:
        try:
            return self._row[int(sample_id)]
        except KeyError:
            raise KeyError(f"{self.path}: no cached rows for sample id {sample_id}") from None

    def rows(self, sample_ids) -> TopKRows:
        """All cached rows of ``sample_ids`` (a list or 1-D tensor), concatenated in that order.

        Raises:
            KeyError: a sample id is not in the cache (the message names the file).
        """
        sel, lengths = self._select(sample_ids)
        return TopKRows(self._ids[sel].long(), self._logp[sel].float(), self._tail[sel].float(),
                        lengths, self.vocab)

    def target_logp(self, sample_ids) -> torch.Tensor:
        """``[P]`` float32 nats: the exact teacher log-probability of the ground-truth next token at
        every cached position of ``sample_ids``, in `rows` order (stored at build time)."""
        return self._target[self._select(sample_ids)[0]].float()

    def _select(self, sample_ids) -> tuple[torch.Tensor, torch.Tensor]:
        spans = [(self._offsets[i], self._offsets[i + 1]) for i in map(self._index, list(map(int, sample_ids)))]
        sel = torch.cat([torch.arange(a, b) for a, b in spans]) if spans else torch.zeros(0, dtype=torch.long)
        return sel, torch.tensor([b - a for a, b in spans], dtype=torch.int64)

    def response_rows(self, sample_ids, response_mask: torch.Tensor) -> TopKRows:
        """`rows` of a collated batch, checked against its layout.

        Args:
            sample_ids: ``[B]`` the batch's ``sample_id`` (list or tensor).
            response_mask: ``[B, T]`` bool, the collator's mask in input-token space.

        Raises:
            ValueError: an example's count of response positions (``response_mask[b, 1:].sum()``)
                differs from its cached rows: the batch was tokenized differently from the cache.
        """
        rows = self.rows(sample_ids)
        got = response_mask[:, 1:].sum(1).cpu()
        if rows.lengths.shape != got.shape or not torch.equal(rows.lengths, got):
            raise ValueError(f"{self.path}: batch response lengths {got.tolist()} differ from the "
                             f"cached ones {rows.lengths.tolist()} (other tokenization or max_length)")
        return rows

    def teacher_logprobs(self, sample_ids, response_mask: torch.Tensor) -> torch.Tensor:
        """Dense stand-in for the teacher's logits of a collated batch.

        Returns:
            ``[B, T, V]`` float32 nats, aligned like a causal LM's logits (position t is the
            distribution of token t + 1): the `reconstruct`-ed rows at response positions, a
            uniform log(1 / V) elsewhere (masked out by every loss), on ``response_mask``'s device.
        """
        rows = self.response_rows(sample_ids, response_mask)
        B, T = response_mask.shape
        out = torch.full((B, T, self.vocab), -math.log(self.vocab), device=response_mask.device)
        pos = torch.zeros(B, T, dtype=torch.bool, device=response_mask.device)
        pos[:, :-1] = response_mask[:, 1:].bool()
        out[pos] = rows.to(response_mask.device).dense()
        return out


def cached_per_token_loss(name: str, student_logits: torch.Tensor, rows: TopKRows, mask: torch.Tensor,
                          **params) -> torch.Tensor:
    """A `dakd.losses` per-token loss against cached teacher rows instead of teacher logits.

    Only the response rows of the teacher are materialised (``[M, V]``, not ``[B, T, V]``); the value
    is the loss of the reconstruction, exactly what ``get_per_token_loss(name)(student_logits,
    teacher_logprobs[:, :-1], mask)`` gives.

    Args:
        name: loss name or alias (`dakd.losses.get_per_token_loss`).
        student_logits: ``[B, T-1, V]`` (already shifted: position t predicts token t + 1), or the
            ``[M, V]`` rows of the masked positions alone (`dakd.models.response_logits`).
        rows: `TopKTeacherCache.response_rows` of the batch.
        mask: ``[B, T-1]`` bool, ``response_mask[:, 1:]``.
        params: the loss's weight (lam, alpha, beta).

    Returns:
        ``[B, T-1]`` float32 nats per token, 0 off the mask; the gradient reaches the student.

    Raises:
        ValueError: ``rows`` (or ``[M, V]`` student rows) hold another number of rows than the mask,
            or another vocabulary.
    """
    mask = mask.bool()
    M, V = int(mask.sum()), student_logits.shape[-1]
    s_rows = student_logits if student_logits.dim() == 2 else student_logits[mask]
    if len(rows.log_tail) != M or rows.vocab != V:
        raise ValueError(f"{len(rows.log_tail)} cached rows of vocabulary {rows.vocab} for {M} masked "
                         f"positions of vocabulary {V}")
    teacher = rows.to(student_logits.device).dense()[None]  # [1, M, V]
    if s_rows.shape[0] != M:
        raise ValueError(f"{s_rows.shape[0]} student rows for {M} masked positions")
    tok = get_per_token_loss(name)(s_rows[None], teacher, None, **params)[0]
    return torch.zeros(mask.shape, dtype=tok.dtype, device=tok.device).masked_scatter(mask, tok)


def topk_response_ce(cache: TopKTeacherCache, examples: list[dict], exact: bool = False) -> torch.Tensor:
    """CE_teacher of DDS (paper Eq. 1) from the cache: per example, the mean over response tokens of
    -log p(ground-truth token).

    Args:
        exact: False: the reconstruction's value, exact when the token is in the top k, else the
            uniform tail share -(log_tail - log(V - k)) (the CE of the distribution the losses see).
            True: the exact teacher log-probability stored at build time (``target_logp``), so DDS
            carries no cache error at any k (measured: ``benchmarks/teacher_cache.py``).

    Returns:
        ``[N]`` float32 nats per response token, in ``examples`` order (0 for no response token);
        equals `dakd.difficulty.response_ce` of the exact teacher when k = V or ``exact``.

    Raises:
        KeyError: an example is not in the cache. ValueError: its response length differs.
    """
    rows = cache.rows([e["sample_id"] for e in examples])
    want = torch.tensor([len(e["input_ids"]) - e["prompt_length"] for e in examples], dtype=torch.int64)
    if not torch.equal(rows.lengths, want):
        bad = next(i for i in range(len(examples)) if rows.lengths[i] != want[i])
        raise ValueError(f"{cache.path}: sample id {examples[bad]['sample_id']} has {int(want[bad])} "
                         f"response tokens but {int(rows.lengths[bad])} cached rows")
    if exact:
        lp = cache.target_logp([e["sample_id"] for e in examples])
    else:
        targets = torch.tensor([t for e in examples for t in e["input_ids"][e["prompt_length"]:]],
                               dtype=torch.long)
        hit = rows.ids == targets[:, None]  # [P, k], at most one True per row
        found = hit.any(1)
        tail = (rows.log_tail - math.log(cache.vocab - cache.k) if cache.k < cache.vocab
                else torch.full_like(rows.log_tail, float("-inf")))
        lp = torch.where(found, rows.logp.masked_fill(~hit, 0.0).sum(1), tail)
    seg = torch.repeat_interleave(torch.arange(len(examples)), rows.lengths)
    total = torch.zeros(len(examples)).index_add_(0, seg, -lp)
    return total / rows.lengths.clamp(min=1)


def load_or_build_topk_cache(teacher, examples: list[dict], pad_token_id: int, k: int, teacher_name: str,
                             max_length: int | None, vocab: int | None = None, batch_size: int = 8,
                             folder: str | Path | None = None, logp_dtype: torch.dtype = torch.float32,
                             accelerator=None) -> tuple[TopKTeacherCache, bool]:
    """The cache of these settings (`topk_cache_path`), built first when absent.

    With an ``accelerator`` of several processes the main process builds and the others wait, then
    all read the same file. A damaged or foreign file at the path raises `TopKCacheError` rather
    than being overwritten silently.

    Args:
        teacher: the teacher model, or None when the caller knows the file is there (a cache hit
            needs no teacher weights; ``vocab`` is then required).

    Returns:
        (the opened cache, whether the file was already there).

    Raises:
        ValueError: ``teacher`` is None but the file must be built (or V is unknown).
    """
    if teacher is None and vocab is None:
        raise ValueError("load_or_build_topk_cache: without a teacher, vocab must be given")
    V = vocab or head_size(teacher)
    path = topk_cache_path(teacher_name, examples, k, max_length, V, logp_dtype, folder)
    hit = path.exists()
    if not hit and teacher is None:
        raise ValueError(f"{path} is absent and no teacher was given to build it")
    if not hit and (accelerator is None or accelerator.is_main_process):
        build_topk_cache(teacher, examples, pad_token_id, k, path, batch_size, teacher_name=teacher_name,
                         max_length=max_length, vocab=V, logp_dtype=logp_dtype)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return TopKTeacherCache(path, teacher_name=teacher_name, examples=examples, k=k,
                            max_length=max_length, vocab=V), hit
