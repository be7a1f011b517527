"""Students: kept teacher layers are copied exactly; layer choices; fresh students; architectures."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from lmdistill.errors import ModelError
from lmdistill.models.student import fresh_student, layer_list, select_layers, student_from_teacher

SMALL = dict(
    vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=40
)


def make(family: str, layers: int = 4):
    torch.manual_seed(0)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(num_hidden_layers=layers, **SMALL))
    if family == "roberta":
        return RobertaForSequenceClassification(
            RobertaConfig(num_hidden_layers=layers, pad_token_id=1, **SMALL)
        )
    if family == "mpnet":
        return MPNetForSequenceClassification(MPNetConfig(num_hidden_layers=layers, **SMALL))
    cfg = DistilBertConfig(
        vocab_size=50, dim=16, n_heads=2, hidden_dim=32, n_layers=layers, max_position_embeddings=40
    )
    return DistilBertForSequenceClassification(cfg)


def test_select_layers():
    assert select_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice for bert-base
    assert select_layers(6, 3) == [0, 2, 5]
    assert select_layers(6, 3, "first") == [0, 1, 2]
    assert select_layers(6, 3, "last") == [3, 4, 5]
    assert select_layers(6, 1) == [0]
    with pytest.raises(ModelError, match="between 1 and the teacher's 6 layers, got 7"):
        select_layers(6, 7)


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet", "distilbert"])
def test_student_copies_exactly_the_chosen_layers(family):
    teacher = make(family)
    keep = [0, 3]
    student = student_from_teacher(teacher, keep)
    t_layers, s_layers = layer_list(teacher)[2], layer_list(student)[2]
    assert len(s_layers) == 2 and student.config.num_hidden_layers == 2
    for new, old in enumerate(keep):
        for (n1, p1), (n2, p2) in zip(s_layers[new].named_parameters(), t_layers[old].named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)
            assert p1.data_ptr() != p2.data_ptr()  # a copy, not shared storage
    t_state, s_state = teacher.state_dict(), student.state_dict()
    outside = [k for k in t_state if ".layer." not in k and ".layers." not in k]
    for k in outside:  # embeddings, pooler, head
        assert torch.equal(t_state[k], s_state[k]), k
    assert len(layer_list(teacher)[2]) == 4  # the teacher is untouched


def test_student_saves_and_reloads(tmp_path):
    student = student_from_teacher(make("bert"), [1, 2])
    student.save_pretrained(tmp_path)
    again = BertForSequenceClassification.from_pretrained(tmp_path)
    x = torch.randint(0, 50, (2, 7))
    student.eval()
    again.eval()
    torch.testing.assert_close(student(x).logits, again(x).logits)


def test_layer_outside_teacher_fails_with_valid_range():
    with pytest.raises(
        ModelError, match=r"layer 4 is outside the teacher, which has 4 layers \(valid indices 0..3\)"
    ):
        student_from_teacher(make("bert"), [0, 4])


def test_fresh_student_from_config():
    s = fresh_student(
        make("bert"), seed=1, num_layers=2, hidden_size=8, num_attention_heads=None, intermediate_size=None
    )
    assert s.config.num_hidden_layers == 2 and s.config.hidden_size == 8 and s.config.intermediate_size == 32
    assert len(layer_list(s)[2]) == 2
    with pytest.raises(ModelError, match="not divisible"):
        fresh_student(
            make("bert"), seed=1, num_layers=2, hidden_size=9, num_attention_heads=2, intermediate_size=None
        )


def test_decoder_student_renumbers_layers():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    teacher = LlamaForCausalLM(cfg)
    student = student_from_teacher(teacher, [0, 3])
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    out = student.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
