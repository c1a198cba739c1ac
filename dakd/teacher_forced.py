"""Teacher-forced metrics on the reference responses of an evaluation set (issue 15, part 1).

ROUGE-L of sampled text is noisy at CPU scale (a few dozen prompts, one seed, students that write
word salad): method differences drown in it. Teacher forcing reads the same prompts' reference
responses instead, with one forward pass per model and no sampling, so every response token of
every prompt contributes:

- ``student_ce`` and ``teacher_ce``: cross-entropy of the reference tokens, nats per response token
  (the quantities of DA-KD's DDS, Eq. 1, here on the evaluation set);
- ``forward_kl``: KL(p || q) of the teacher's next-token distribution p from the student's q at
  every response position, nats per response token (`dakd.losses.forward_kl_per_token`, the KD-KL
  loss), over the shared vocabulary of the pair (`dakd.models.check_pair`);
- ``top1_agreement``: share of response positions where the student's and the teacher's argmax
  agree (ties: the lowest token id, ``torch.argmax``);
- ``num_tokens``: response tokens scored (the reference plus its EOS, as training sees them).

The set's records are those the evaluation loads (`dakd.tasks.load_eval_records`), tokenized
exactly as training tokenizes (`dakd.data.tokenize_records` with the run's prompt style and
lengths: the prompt ids are the evaluation's, `dakd.data.encode_prompts`); a set with several
references per prompt (S-NI) uses the first. Records dropped by that tokenization (prompt too long,
empty reference) are counted in ``filter``. ``sample_id`` is a record's position in the loaded test
records, the same key as the evaluation's ``prompt_ids``, so runs can be paired prompt by prompt
(`dakd.compare.paired_difference`). Set-level values are token-weighted means over the whole set;
the per-prompt values are means over that prompt's response tokens.

For the Teacher row (the student is the teacher) one forward pass is made and both sides read the
same logits: KL is exactly 0 and agreement exactly 1.
"""

from __future__ import annotations

import time

import torch

from .data import tokenize_records
from .difficulty import predicting_positions, response_ce_rows, share_batches
from .losses import forward_kl_per_token
from .models import response_logits

METRICS = ("student_ce", "teacher_ce", "forward_kl", "top1_agreement")
# columns of the per-sample accumulator: sums over response tokens, then the token count and a
# "scored" flag (1 per sample on the process that scored it: the exactly-once check after reducing)
_COLS = ("student_ce", "teacher_ce", "forward_kl", "top1_agreement", "num_tokens", "scored")


def set_examples(dataset: str, tokenizer, prompt_style: str, max_prompt_length: int, max_length: int,
                 limit: int | None = None) -> tuple[list[dict], dict]:
    """The evaluation set's records as training examples, prompt + first reference.

    Args:
        dataset: any ROUGE-L set of `dakd.tasks.EVAL_SETS`.
        tokenizer: the evaluated model's tokenizer.
        prompt_style, max_prompt_length, max_length: the run's (`dakd.config.DistillConfig`).
        limit: the first ``limit`` test records (None: all of them).

    Returns:
        (examples, filter report dict): examples as `dakd.data.tokenize_records` returns them
        (``input_ids``, ``prompt_length``, ``sample_id`` = position in the loaded records, ``index``).

    Raises:
        ValueError: an accuracy set (GSM8K: its references are solutions, not what is scored), an
            unknown set; and as `dakd.tasks.load_eval_records`.
    """
    from . import tasks

    if tasks.eval_spec(dataset).metric != "rougeL":
        raise ValueError(f"teacher-forced metrics are for ROUGE-L sets; {dataset!r} is scored by "
                         f"{tasks.eval_spec(dataset).metric}")
    records = tasks.load_eval_records(dataset, limit)
    # several references (S-NI): the first is the response
    records = [r if isinstance(r["output"], str) else r | {"output": r["output"][0]} for r in records]
    examples, report = tokenize_records(records, tokenizer, prompt_style, max_prompt_length, max_length)
    return examples, report.to_dict()


def teacher_forced_metrics(student, teacher, examples: list[dict], pad_token_id: int, batch_size: int = 8,
                           accelerator=None, vocab: int | None = None, desc: str = "teacher-forced") -> dict:
    """Student and teacher on the reference responses of ``examples`` under teacher forcing.

    One forward pass per model per batch (none at all for the teacher when ``teacher is student``:
    the student's logits are read for both). Batches are formed from length-sorted examples; logits
    are taken at the response rows only (`dakd.models.response_logits` of
    `dakd.difficulty.predicting_positions`), ``[M, V]`` per model, sliced to ``[:, :vocab]``.
    Per response row: CE of the reference token (`dakd.difficulty.response_ce_rows`, as DDS
    scoring computes it), forward KL(p_teacher || q_student) (`dakd.losses.forward_kl_per_token`,
    float32 from the logits; float64 for float64 models) and whether the argmaxes agree.

    Data-parallel like `dakd.difficulty.score_dataset`: with an ``accelerator`` of W processes,
    process r takes every W-th example of the length order; every process makes the same number of
    forward passes (a shorter share repeats its first batch and discards it, so sharded models
    gather alike); the per-sample sums are reduced, and every process returns the same dict.

    Args:
        student, teacher: causal LMs on the same device (``accelerator.device`` with one), in eval
            mode; ``teacher`` may be ``student`` itself (the Teacher row).
        examples: `dakd.data.tokenize_records` examples (``input_ids``, ``prompt_length``,
            ``sample_id``); their order is kept in ``per_prompt``.
        pad_token_id: padding id of the pair's tokenizer.
        vocab: the shared vocabulary V of the pair (`dakd.models.check_pair`); None: the whole head
            (both heads must then have the same rows).

    Returns:
        dict with ``student_ce``, ``teacher_ce``, ``forward_kl`` (nats per response token, float)
        and ``top1_agreement`` (share in [0, 1]), each a token-weighted mean over every response
        token of the set (NaN when there is none); ``num_tokens`` (int, response tokens);
        ``num_prompts``; ``num_processes``; ``per_prompt``: one dict per example, in example order,
        {``sample_id``, ``student_ce``, ``teacher_ce``, ``forward_kl``, ``top1_agreement``
        (means over that prompt's response tokens), ``num_tokens``}.

    Raises:
        ValueError: student and teacher logits of different widths (pass ``vocab``).
        RuntimeError: after the reduction some example was scored by no process or by two (a
            broken data-parallel split; never silently averaged).
    """
    return teacher_forced_many({"student": student}, teacher, examples, pad_token_id, batch_size,
                               accelerator, vocab, desc)["student"]


@torch.no_grad()
def teacher_forced_many(students: dict, teacher, examples: list[dict], pad_token_id: int, batch_size: int = 8,
                        accelerator=None, vocab: int | None = None, desc: str = "teacher-forced") -> dict[str, dict]:
    """`teacher_forced_metrics` of several students against one teacher, with one teacher forward
    pass per batch for all of them: a study evaluating many runs of one teacher pays for the
    teacher once (`dakd.claims.add_teacher_forced`). The students' logits are computed one student
    at a time, so memory holds two models' ``[M, V]`` rows, not one per student. The values of each
    student are exactly those `teacher_forced_metrics` gives it alone (the same batches, the same
    teacher logits).

    Args:
        students: {name: causal LM}, all on the teacher's device; one may be ``teacher`` itself.
        teacher, examples, pad_token_id, batch_size, accelerator, vocab, desc: as
            `teacher_forced_metrics`.

    Returns:
        {name: the dict `teacher_forced_metrics` returns for that student}, in ``students``'s order.

    Raises:
        ValueError: no students; and as `teacher_forced_metrics`.
        RuntimeError: as `teacher_forced_metrics`.
    """
    if not students:
        raise ValueError("teacher_forced_many needs at least one student")
    n = len(examples)
    world = accelerator.num_processes if accelerator else 1
    first = next(iter(students.values()))
    device = accelerator.device if accelerator else next(first.parameters()).device
    sums = {k: torch.zeros(n, len(_COLS), dtype=torch.float64) for k in students}
    models = [*students.values(), teacher]
    modes = [m.training for m in models]
    same = {k for k, s in students.items() if s is teacher}  # the Teacher row reads the teacher's logits
    for m in models:
        m.eval()
    try:
        for idx, b in share_batches(examples, pad_token_id, batch_size, device, accelerator, desc):
            pos = predicting_positions(b["response_mask"])
            # the teacher's rows once; then one student's [M, V] rows at a time (memory: two models' rows)
            t_rows = response_logits(teacher, b["input_ids"], b["attention_mask"], pos)[:, :vocab]
            t_ce = response_ce_rows(t_rows, b["input_ids"], b["response_mask"]).double() if idx else None
            count = b["response_mask"][:, 1:].sum(1).double()  # [B] response tokens per sample
            sample = pos.nonzero()[:, 0]  # [M] sample of each response row
            for k, s in students.items():
                s_rows = t_rows if k in same else response_logits(s, b["input_ids"], b["attention_mask"], pos)[:, :vocab]
                if not idx:  # the repeated batch of a shorter share: computed, discarded
                    continue
                if s_rows.shape[-1] != t_rows.shape[-1]:
                    raise ValueError(f"student logits have {s_rows.shape[-1]} columns, teacher logits "
                                     f"{t_rows.shape[-1]}: pass vocab (dakd.models.check_pair)")
                s_ce = t_ce if k in same else response_ce_rows(s_rows, b["input_ids"], b["response_mask"]).double()
                kl_rows = forward_kl_per_token(s_rows[None], t_rows[None])[0].double()  # [M]
                agree_rows = (s_rows.argmax(-1) == t_rows.argmax(-1)).double()  # [M]
                B = count.shape[0]
                kl = torch.zeros(B, dtype=torch.float64, device=kl_rows.device).index_add_(0, sample, kl_rows)
                agree = torch.zeros(B, dtype=torch.float64, device=agree_rows.device).index_add_(0, sample, agree_rows)
                # CE sums from the per-sample means (the exact values DDS scoring gives), times the counts
                block = torch.stack([s_ce * count, t_ce * count, kl, agree, count, torch.ones_like(count)], 1)
                sums[k][idx] = block.cpu()
                del s_rows, kl_rows, agree_rows
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return {k: _summarise(v, examples, accelerator, device, world) for k, v in sums.items()}


def _summarise(sums: torch.Tensor, examples: list[dict], accelerator, device, world: int) -> dict:
    """The returned dict of `teacher_forced_metrics` from one student's per-sample sums ``[N, 6]``."""
    n = len(examples)
    if world > 1:
        # disjoint rows per process: a sum reassembles the whole table
        sums = accelerator.reduce(sums.to(device), reduction="sum").cpu()
    if n and not torch.equal(sums[:, -1], torch.ones(n, dtype=torch.float64)):
        bad = [examples[i]["sample_id"] for i in range(n) if sums[i, -1] != 1][:5]
        raise RuntimeError(f"{n} examples, but sample(s) {bad} were scored {sums[:, -1].tolist()[:5]} times "
                           "(each must be scored by exactly one process)")
    total = sums.sum(0)
    tokens = int(total[4].item())
    out = {m: (total[j].item() / tokens if tokens else float("nan")) for j, m in enumerate(METRICS)}
    per = []
    for i, e in enumerate(examples):
        k = sums[i, 4].item()
        per.append({"sample_id": e["sample_id"],
                    **{m: (sums[i, j].item() / k if k else float("nan")) for j, m in enumerate(METRICS)},
                    "num_tokens": int(k)})
    return out | {"num_tokens": tokens, "num_prompts": n, "num_processes": world, "per_prompt": per}


def load_teacher(cfg, student, student_tokenizer, model_path, device):
    """The run's teacher for teacher-forced metrics, and the pair's shared vocabulary.

    Args:
        cfg: the run's `dakd.config.DistillConfig` (``teacher``, ``dtype``, ``trust_remote_code``).
        student: the loaded model under evaluation; returned as the teacher when ``model_path`` is
            ``cfg.teacher`` (the Teacher row: the student is the teacher).
        student_tokenizer: its tokenizer.
        model_path: the folder or name ``student`` was loaded from.
        device: where the teacher is put.

    Returns:
        (teacher model, frozen (`dakd.models.load_frozen`) and on ``device``; V, the shared
        vocabulary size, int).

    Raises:
        ValueError: as `dakd.models.check_pair` (the tokenizers differ, a head smaller than the
            tokenizer).
    """
    from .models import check_pair, load_frozen, load_tokenizer

    if str(model_path) == str(cfg.teacher):
        return student, check_pair(student_tokenizer, student_tokenizer, student, student)
    teacher = load_frozen(cfg.teacher, cfg.dtype, cfg.trust_remote_code).to(device)
    vocab = check_pair(load_tokenizer(cfg.teacher, cfg.trust_remote_code), student_tokenizer, teacher, student)
    return teacher, vocab


def evaluate_set(cfg, dataset: str, student, tokenizer, teacher, vocab: int | None = None,
                 accelerator=None) -> dict:
    """``eval[<dataset>]["teacher_forced"]`` of a run: `teacher_forced_metrics` over the set's
    records (`set_examples` with the run's prompt style and lengths, the first
    ``cfg.teacher_forced_samples`` records; None: the whole set), plus ``filter`` (the
    tokenization's counts), ``num_records`` (records loaded) and ``seconds``.

    Args:
        cfg: the run's `dakd.config.DistillConfig`.
        student, tokenizer: the model under evaluation and its tokenizer.
        teacher, vocab: from `load_teacher`.
        accelerator: as `teacher_forced_metrics`.

    Returns:
        the dict of `teacher_forced_metrics` with the keys above added.

    Raises:
        ValueError: as `set_examples` (GSM8K and unknown sets) and `teacher_forced_metrics`.
    """
    t0 = time.perf_counter()
    examples, report = set_examples(dataset, tokenizer, cfg.prompt_style, cfg.max_prompt_length,
                                    cfg.max_length, cfg.teacher_forced_samples)
    res = teacher_forced_metrics(student, teacher, examples, tokenizer.pad_token_id, cfg.eval_batch_size,
                                 accelerator, vocab, desc=f"{dataset} teacher-forced")
    return res | {"filter": report, "num_records": report["loaded"], "seconds": time.perf_counter() - t0}
