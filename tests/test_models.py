"""Tests for dakd.models: the offline default pair, layer-subset students, the tokenizer/head check
and the atomic checkpoint build."""

import pytest
import torch

from dakd import data as D
from dakd import models as M
from dakd.evaluate import generate
from dakd.io import atomic_folder


@pytest.fixture(scope="module")
def teacher():
    return M.load_model(M.DEFAULT_TEACHER)


def test_default_teacher_loads_offline_and_answers_a_dolly_prompt(teacher, smol_tok):
    c = teacher.config
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (30, 576, 49152)
    assert teacher.get_output_embeddings().weight.shape == (49152, 576)
    tok = M.load_tokenizer(M.DEFAULT_TEACHER)
    assert tok.get_vocab() == smol_tok.get_vocab()  # the tiny models carry the same tokenizer
    record = D.load_split("dolly", "test", limit=1)[0]
    prompt = D.format_prompt(record, "chatml", tok)
    assert prompt.endswith("<|im_start|>assistant\n")
    stats = {}
    out = generate(teacher, tok, [prompt], seed=None, max_new_tokens=16, stats=stats)
    assert len(out) == 1 and out[0].strip()
    assert 0 < stats["generated_tokens"] <= 16


def test_default_student_is_cut_from_the_teacher(teacher):
    student = M.load_model(M.DEFAULT_STUDENT)
    assert student.config.num_hidden_layers == len(M.STUDENT_LAYERS) == 6
    assert student.config.hidden_size == 576
    torch.testing.assert_close(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight,
                               rtol=0, atol=0)
    torch.testing.assert_close(student.model.norm.weight, teacher.model.norm.weight, rtol=0, atol=0)
    for i, j in enumerate(M.STUDENT_LAYERS):
        s, t = student.model.layers[i], teacher.model.layers[j]
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            torch.testing.assert_close(s.get_parameter(name), t.get_parameter(name), rtol=0, atol=0)
    # and not some other layer: layer 1 of the student is teacher layer 6, not teacher layer 1
    q = lambda m, i: m.model.layers[i].self_attn.q_proj.weight  # noqa: E731
    assert not torch.equal(q(student, 1), q(teacher, 1))


def test_layer_subset_student_maps_layers_and_rejects_bad_lists(tmp_path, monkeypatch):
    src = M.resolve_model(M.TINY_TEACHER)  # a folder: nothing below needs the shared cache
    monkeypatch.setenv("DAKD_CACHE_DIR", str(tmp_path))
    for bad in [(1, 0), (), (0, 2), (0, 0)]:  # unsorted, empty, out of range (2 layers), repeated
        with pytest.raises(ValueError, match="layers"):
            M.build_layer_subset_student(src, layers=bad, name="bad")
    assert list((tmp_path / "models").iterdir()) == []  # no half-built folder left behind
    path = M.build_layer_subset_student(src, layers=(1,), name="one")
    s, t = M.load_model(path), M.load_model(src)
    assert s.config.num_hidden_layers == 1
    torch.testing.assert_close(s.model.layers[0].mlp.up_proj.weight, t.model.layers[1].mlp.up_proj.weight,
                               rtol=0, atol=0)


# ---------------------------------------------------------------- check_pair

def test_check_pair_rejects_a_different_tokenizer(smol_tok, tmp_path):
    smol_tok.save_pretrained(tmp_path / "tok")
    other = M.load_tokenizer(tmp_path / "tok")
    assert M.check_pair(smol_tok, other) == 49152
    other.add_tokens(["<dakd_extra_token>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        M.check_pair(smol_tok, other)
    with pytest.raises(ValueError, match="tokenizers differ"):
        M.check_pair(other, smol_tok)
    # a tokenizer larger than the model heads cannot be served
    tiny = M.load_model(M.TINY_STUDENT)
    with pytest.raises(ValueError, match="rows"):
        M.check_pair(other, other, tiny, tiny)


def test_check_pair_returns_the_smaller_head_when_one_has_padding_rows(smol_tok):
    # Qwen2.5-7B's head has 152,064 rows, its small siblings 151,936: extra rows are padding
    padded, plain = M.load_model(M.TINY_TEACHER), M.load_model(M.TINY_STUDENT)
    padded.resize_token_embeddings(49152 + 64, mean_resizing=False)
    assert padded.get_output_embeddings().weight.shape[0] == 49216
    assert M.check_pair(smol_tok, smol_tok, padded, plain) == 49152
    assert M.check_pair(smol_tok, smol_tok, plain, padded) == 49152
    assert M.check_pair(smol_tok, smol_tok, padded, padded) == 49216


# ---------------------------------------------------------------- atomic_folder (dakd.io)

def test_atomic_folder_leaves_nothing_when_the_build_fails(tmp_path):
    out = tmp_path / "models" / "m"

    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        raise KeyboardInterrupt  # even an interrupt, not only an Exception
    with pytest.raises(KeyboardInterrupt):
        atomic_folder(broken, out)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []

    def good(tmp):
        (tmp / "config.json").write_text('{"ok": 1}')
    assert atomic_folder(good, out) == out
    assert (out / "config.json").read_text() == '{"ok": 1}'
    # an existing folder is trusted and never rebuilt
    assert atomic_folder(broken, out) == out
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["m"]


def test_resolve_model_passes_folders_and_hub_names_through(tmp_path):
    assert M.resolve_model(tmp_path) == str(tmp_path)
    assert M.resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert M.resolve_model(M.TINY_STUDENT) == str(M.cache_dir() / "models" / M.TINY_STUDENT)
