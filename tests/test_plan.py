"""The GPU memory plan (`dakd.plan`, ``python -m dakd.cli plan``): exact arithmetic on a made-up
model, the published sizes of the paper presets' models, the strategies' order, the CLI table for
every paper preset, clear errors, and a user's own model folder."""

import pytest

from dakd import plan
from dakd.cli import main
from dakd.plan import GB, ModelSize, activation_bytes, logits_bytes, model_size, plan_memory, state_bytes
from dakd.presets import PAPER_PRESET_NEEDS

# a made-up 1B model: 10 layers of 90M parameters, 100M outside them, V x h = 25,000 x 2,000 = 50M
TOY = ModelSize("toy", params=1_000_000_000, layer_params=90_000_000, nonlayer_params=100_000_000, hidden=2000,
                intermediate=5000, layers=10, heads=16, kv_heads=16, head_dim=125, vocab=25000)


def gb(d):
    return {k: v / GB for k, v in d.items()}


def test_ddp_by_hand():
    # fp32 compute, gradient_as_bucket_view: the textbook 4 + 4 + 8 = 16 bytes per parameter
    assert gb(state_bytes(TOY, "ddp", 4, compute_bytes=4, ddp_bucket_view=True)) == \
        {"weights": 4.0, "gradients": 4.0, "optimizer": 8.0}
    # bf16 autocast over fp32 masters: + 2 B (bf16 weight copies held for backward), + 4 B (DDP buckets);
    # DDP shards nothing, so the number of GPUs changes nothing
    for n in (1, 4, 8):
        assert gb(state_bytes(TOY, "ddp", n)) == {"weights": 6.0, "gradients": 8.0, "optimizer": 8.0}
    assert gb(state_bytes(TOY, "ddp", 4, ddp_bucket_view=True))["gradients"] == 4.0


def test_zero2_by_hand():
    # bf16 module replicated (2), bf16 gradient partition 2/4 + the largest gradient (V h = 50M x 2 B),
    # fp32 master + moments 12/4
    assert gb(state_bytes(TOY, "deepspeed_zero2", 4)) == {"weights": 2.0, "gradients": 0.5 + 0.1, "optimizer": 3.0}


def test_zero3_and_fsdp_by_hand():
    # ZeRO-3: 2/4 bf16 partition + one gathered layer (90M) and the V x h matrix (50M), 2 B each
    assert gb(state_bytes(TOY, "deepspeed_zero3", 4)) == pytest.approx(
        {"weights": 0.5 + 0.28, "gradients": 0.5 + 0.1, "optimizer": 3.0}, abs=1e-12)
    # FSDP2: fp32 shards 4/4 + 8/4; gathered bf16: root unit (100M) + 2 layers, unsharded grads: root + 1 layer
    assert gb(state_bytes(TOY, "fsdp", 4)) == pytest.approx(
        {"weights": 1.0 + 0.56, "gradients": 1.0 + 0.38, "optimizer": 2.0}, abs=1e-12)
    # the sharded strategies together hold the 16 B/parameter of the masters, once over the GPUs
    s = state_bytes(TOY, "fsdp", 8)
    assert s["optimizer"] * 8 == 8e9 and s["weights"] - 2 * (2 * 90e6 + 100e6) == 4e9 / 8


def test_activations_and_logits_by_hand():
    # 2 x 512 tokens, 10 layers: 2 (7 h + 4 i) + 2 (4 + 2) h = 68,000 + 24,000 bytes per token and layer
    assert activation_bytes(TOY, 1024) == 1024 * 10 * 92_000
    # DDP's fp32 residual stream adds 2 x 2 h per token and layer
    assert activation_bytes(TOY, 1024, residual_bytes=4) - activation_bytes(TOY, 1024) == 1024 * 10 * 4 * 2000
    # Llama-2-7B: 47.5 h per token and layer (Korthikanti's GPT layer: 34 h)
    llama = model_size("meta-llama/Llama-2-7b-hf")
    assert activation_bytes(llama, 1) == 32 * 47.5 * 4096
    # distillation: rows 1024 x (3 x 2 V + 2 V_t) + 8 float32 [256, V] chunk tensors
    assert logits_bytes("distill", 1024, 32000, 32000) == 1024 * 8 * 32000 + 8 * 256 * 32000 * 4
    assert logits_bytes("sft", 1024, 32000) == 1024 * 32000 * 12
    assert logits_bytes("generate", 32, 32000) == 32 * 32000 * 16


@pytest.mark.parametrize("name, published, last_digit", [
    ("meta-llama/Llama-2-7b-hf", 6_738_415_616, 1),  # the model card's exact count
    # the cards' counts to their last digit (Qwen: 7.61B, non-embedding 6.53B, ...; Sheared-LLaMA: 1.3B, 2.7B)
    ("Qwen/Qwen2.5-7B", 7.61e9, 0.01e9), ("Qwen/Qwen2.5-1.5B", 1.54e9, 0.01e9), ("Qwen/Qwen2.5-0.5B", 0.49e9, 0.01e9),
    ("meta-llama/Llama-3.2-3B", 3.21e9, 0.01e9), ("meta-llama/Llama-3.2-1B", 1.24e9, 0.01e9),
    ("princeton-nlp/Sheared-LLaMA-1.3B", 1.3e9, 0.1e9), ("princeton-nlp/Sheared-LLaMA-2.7B", 2.7e9, 0.1e9)])
def test_hub_models_match_their_published_sizes(name, published, last_digit):
    m = model_size(name)
    assert abs(m.params - published) < last_digit, m.params
    assert m.params == m.layers * m.layer_params + m.nonlayer_params
    if name.startswith("Qwen"):  # Qwen's cards also give the count without the embeddings (and untied head)
        non_embedding = m.params - (m.nonlayer_params - m.hidden)
        assert abs(non_embedding - {"7B": 6.53e9, "1.5B": 1.31e9, "0.5B": 0.36e9}[name.rsplit("-", 1)[1]]) < 0.01e9


def test_a_paper_preset_by_hand():
    rows = plan_memory("llama2-7b-sheared-2.7b", 4, 80)
    assert [(r["stage"], r["strategy"]) for r in rows] == [
        *(("teacher_sft", s) for s in plan.STRATEGIES), *(("students", s) for s in plan.STRATEGIES),
        ("evaluation", "any")]
    st = {r["strategy"]: r for r in rows if r["stage"] == "students"}
    # the frozen bf16 Llama-2-7B, whole on every GPU under every strategy
    assert {r["teacher"] for r in st.values()} == {2 * 6_738_415_616}
    assert st["ddp"]["optimizer"] == 8 * 2_701_560_320 and st["deepspeed_zero2"]["optimizer"] == 3 * 2_701_560_320
    assert all(r["budget"] == 72e9 for r in rows)
    assert all(r["total"] == sum(r[k] for k in plan.COMPONENTS) for r in rows)
    ev = rows[-1]  # the 7B teacher generates: bf16 weights and a KV cache of 32 x 512 tokens
    assert ev["model"] == "meta-llama/Llama-2-7b-hf" and ev["weights"] == 2 * 6_738_415_616
    assert ev["activations"] == 32 * 512 * 32 * 2 * 4096 * 2 + 32 * 256 * 2 * (6 * 4096 + 3 * 11008)


@pytest.mark.parametrize("preset", list(PAPER_PRESET_NEEDS))
@pytest.mark.parametrize("gpus", [4, 8])
def test_strategies_are_ordered_by_memory(preset, gpus):
    rows = plan_memory(preset, gpus, 80)
    for stage in ("teacher_sft", "students"):
        t = {r["strategy"]: r["total"] for r in rows if r["stage"] == stage}
        assert t["ddp"] > t["deepspeed_zero2"] > max(t["fsdp"], t["deepspeed_zero3"]), (stage, t)
    more = plan_memory(preset, 2 * gpus, 80)  # more GPUs: less per GPU, except DDP and evaluation
    for a, b in zip(rows, more):
        assert (b["total"] == a["total"]) if a["strategy"] in ("ddp", "any") else b["total"] < a["total"]


def test_the_recommendation_is_the_least_sharded_strategy_that_fits():
    rows = plan_memory("llama2-7b-sheared-2.7b", 4, 40)
    recs = plan.recommendations(rows)
    for stage, line in recs.items():
        fit = [r["strategy"] for r in rows if r["stage"] == stage and r["fits"]]
        assert fit and (fit[0] in line)
    nothing = plan.recommendations(plan_memory("qwen2.5-7b-1.5b", 1, 24))
    assert "nothing fits" in nothing["teacher_sft"]


@pytest.mark.parametrize("preset", list(PAPER_PRESET_NEEDS))
def test_cli_prints_a_table_for_every_paper_preset(preset, capsys):
    assert main(["plan", preset, "--gpus", "4", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{preset} on 4 x 80 GB, 10% headroom (72.0 GB usable per GPU)")
    assert "| stage | strategy | weights | gradients | optimizer | teacher | activations | logits | total GB | fits |" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "stage" not in line]
    assert len(table) == 9  # 4 strategies x (teacher SFT, students) + evaluation
    assert sum(line.startswith("- ") for line in out.splitlines()) == 3


def test_cli_options(capsys):
    main(["plan", "qwen2.5-7b-0.5b", "--gpus", "8", "--gpu-memory", "40", "--headroom", "0.2",
          "--strategy", "fsdp", "--strategy", "ddp", "--ddp-bucket-view"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "stage" not in line]
    assert "(32.0 GB usable per GPU)" in out
    assert [r.split(" | ")[1] for r in rows] == ["ddp", "fsdp", "ddp", "fsdp", "any"]  # least sharded first


@pytest.mark.parametrize("args, match", [
    (("no-such-preset", 4, 80), "unknown preset 'no-such-preset'"),
    (("qwen2.5-7b-0.5b", 0, 80), "gpus must be an integer >= 1, got 0"),
    (("qwen2.5-7b-0.5b", 4, 0), "gpu_memory_gb must be > 0"),
    (("qwen2.5-7b-0.5b", 4, 80, 1.0), "headroom must be in"),
])
def test_bad_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        plan_memory(*args)


def test_unknown_strategy_and_model_are_named():
    with pytest.raises(ValueError, match=r"unknown strategy 'zero3'; known: ddp, deepspeed_zero2, fsdp"):
        plan_memory("qwen2.5-7b-0.5b", 4, 80, strategies=["zero3"])
    with pytest.raises(ValueError, match=r"unknown strategy 'zero3'"):
        main(["plan", "qwen2.5-7b-0.5b", "--gpus", "4", "--gpu-memory", "80", "--strategy", "zero3"])
    with pytest.raises(ValueError, match=r"model 'me/my-model': not a local folder"):
        plan_memory("qwen2.5-7b-0.5b", 4, 80, student="me/my-model")


def test_a_local_model_folder(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False)
    cfg.save_pretrained(tmp_path / "mine")
    m = model_size(tmp_path / "mine")
    real = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    assert m.params == real == ModelSize.from_config_values(
        "x", 64, 176, 3, 4, 2, 1000, tie_word_embeddings=False).params
    assert (m.layers, m.hidden, m.intermediate, m.kv_heads, m.head_dim, m.vocab) == (3, 64, 176, 2, 16, 1000)
    assert m.params == 3 * m.layer_params + m.nonlayer_params
    rows = plan_memory("llama2-7b-sheared-2.7b", 2, 80, student=str(tmp_path / "mine"))
    st = [r for r in rows if r["stage"] == "students"]
    assert st[0]["optimizer"] == 8 * real and st[0]["teacher"] == 2 * 6_738_415_616
    main(["plan", "llama2-7b-sheared-2.7b", "--gpus", "2", "--gpu-memory", "80",
          "--teacher", str(tmp_path / "mine"), "--student", str(tmp_path / "mine")])
    out = capsys.readouterr().out
    assert f"teacher SFT, {tmp_path / 'mine'}:" in out and "| teacher SFT | ddp |" in out


@pytest.mark.parametrize("preset", list(PAPER_PRESET_NEEDS))
def test_preset_needs_name_the_planned_strategy(preset):
    # PAPER_PRESET_NEEDS's advice agrees with the plan on 4 x 80 GB
    rows = plan_memory(preset, 4, 80)
    needs = PAPER_PRESET_NEEDS[preset]
    for stage in ("teacher_sft", "students"):
        assert f"configs/accelerate/{plan.pick(rows, stage)}.yaml" in needs[stage], (stage, needs[stage])


# the README shows two presets' rows, docs/gpus.md every preset's
README_PLAN_PRESETS = ["llama2-7b-sheared-2.7b", "qwen2.5-7b-1.5b"]


def test_readme_and_docs_tables_are_the_generated_ones():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert plan.summary_table(README_PLAN_PRESETS, 4, (80, 40)) in (root / "README.md").read_text()
    assert plan.summary_table(list(PAPER_PRESET_NEEDS), 4, (80, 40)) in (root / "docs" / "gpus.md").read_text()
