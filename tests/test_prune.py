"""Width pruning: exact slices, exact no-op, importance rankings against naive loops, reload, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MPNetConfig,
    MPNetForSequenceClassification,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from lmdistill.errors import ModelError
from lmdistill.models.importance import (
    head_importance,
    hidden_importance,
    neuron_importance,
    width_importance,
)
from lmdistill.models.prune import (
    WidthImportance,
    WidthSelection,
    apply_width,
    keep_heads,
    parameters_for,
    prune_width,
    width_for_parameter_target,
)

VOCAB, HIDDEN, HEADS, HEAD_DIM, INTER, LAYERS = 50, 32, 4, 8, 48, 2
ENCODER = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
DECODER = dict(
    ENCODER, intermediate_size=INTER, num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=False
)


def make(family: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    enc = dict(ENCODER, intermediate_size=INTER, max_position_embeddings=40, num_labels=2, **extra)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(**enc)).eval()
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(pad_token_id=1, **enc)).eval()
    if family == "xlm-roberta":
        return XLMRobertaForSequenceClassification(XLMRobertaConfig(pad_token_id=1, **enc)).eval()
    if family == "electra":
        return ElectraForSequenceClassification(ElectraConfig(embedding_size=16, **enc)).eval()
    if family == "mpnet":
        return MPNetForSequenceClassification(MPNetConfig(pad_token_id=1, **enc)).eval()
    dec = dict(DECODER, **extra)
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**dec)).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**dec)).eval()
    return LlamaForCausalLM(LlamaConfig(**dec)).eval()


def batches(labels: bool = True, n: int = 2, seed: int = 1) -> list[dict]:
    """Right-padded batches of 4 sequences; the last one of each batch is cut short."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, VOCAB, (4, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[-1, 5:] = 0
        ids[-1, 5:] = 0
        batch = dict(input_ids=ids, attention_mask=mask)
        if labels:
            batch["labels"] = torch.randint(0, 2, (4,), generator=g)
        out.append(batch)
    return out


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def channels(heads) -> torch.Tensor:
    return torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in heads])


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def random_subset(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def test_bert_pruning_keeps_exactly_the_chosen_rows_and_columns():
    old = make("bert")
    heads = torch.tensor([[1, 3], [0, 2]])
    hid = random_subset(HIDDEN, 16, 0)
    neu = torch.stack([random_subset(INTER, 20, 1), random_subset(INTER, 20, 2)])
    new = apply_width(old, WidthSelection(heads=heads, hidden=hid, neurons=neu))
    assert (new.config.hidden_size, new.config.num_attention_heads, new.config.intermediate_size) == (
        16,
        2,
        20,
    )
    for i in range(LAYERS):
        o, n, ch = old.bert.encoder.layer[i], new.bert.encoder.layer[i], channels(heads[i])
        for proj in ("query", "key", "value"):
            assert same(
                getattr(n.attention.self, proj).weight, getattr(o.attention.self, proj).weight[ch][:, hid]
            )
            assert same(getattr(n.attention.self, proj).bias, getattr(o.attention.self, proj).bias[ch])
        assert same(n.attention.output.dense.weight, o.attention.output.dense.weight[hid][:, ch])
        assert same(n.attention.output.dense.bias, o.attention.output.dense.bias[hid])
        assert same(n.intermediate.dense.weight, o.intermediate.dense.weight[neu[i]][:, hid])
        assert same(n.intermediate.dense.bias, o.intermediate.dense.bias[neu[i]])
        assert same(n.output.dense.weight, o.output.dense.weight[hid][:, neu[i]])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            assert same(n.get_submodule(ln).weight, o.get_submodule(ln).weight[hid])
            assert same(n.get_submodule(ln).bias, o.get_submodule(ln).bias[hid])
    for emb in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        assert same(
            getattr(new.bert.embeddings, emb).weight, getattr(old.bert.embeddings, emb).weight[:, hid]
        )
    assert same(new.bert.embeddings.LayerNorm.weight, old.bert.embeddings.LayerNorm.weight[hid])
    assert same(new.bert.pooler.dense.weight, old.bert.pooler.dense.weight[hid][:, hid])
    assert same(new.classifier.weight, old.classifier.weight[:, hid])
    assert same(new.classifier.bias, old.classifier.bias)


def test_llama_pruning_keeps_exactly_the_chosen_rows_and_columns():
    old = make("llama")
    heads, kv = torch.tensor([[0, 2], [1, 3]]), torch.tensor([[0, 1], [0, 1]])  # one query head per group
    hid = random_subset(HIDDEN, 16, 3)
    neu = torch.stack([random_subset(INTER, 20, 4), random_subset(INTER, 20, 5)])
    new = apply_width(old, WidthSelection(heads=heads, kv_heads=kv, hidden=hid, neurons=neu))
    cfg = new.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (16, 2, 2, 8)
    for i in range(LAYERS):
        o, n = old.model.layers[i], new.model.layers[i]
        assert same(n.self_attn.q_proj.weight, o.self_attn.q_proj.weight[channels(heads[i])][:, hid])
        for proj in ("k_proj", "v_proj"):
            assert same(
                getattr(n.self_attn, proj).weight, getattr(o.self_attn, proj).weight[channels(kv[i])][:, hid]
            )
        assert same(n.self_attn.o_proj.weight, o.self_attn.o_proj.weight[hid][:, channels(heads[i])])
        for proj in ("gate_proj", "up_proj"):
            assert same(getattr(n.mlp, proj).weight, getattr(o.mlp, proj).weight[neu[i]][:, hid])
        assert same(n.mlp.down_proj.weight, o.mlp.down_proj.weight[hid][:, neu[i]])
        assert same(n.input_layernorm.weight, o.input_layernorm.weight[hid])
        assert same(n.post_attention_layernorm.weight, o.post_attention_layernorm.weight[hid])
    assert same(new.model.embed_tokens.weight, old.model.embed_tokens.weight[:, hid])
    assert same(new.model.norm.weight, old.model.norm.weight[hid])
    assert same(new.lm_head.weight, old.lm_head.weight[:, hid])


@pytest.mark.parametrize(
    "family", ["bert", "roberta", "xlm-roberta", "electra", "mpnet", "llama", "mistral", "qwen2"]
)
def test_keeping_everything_reproduces_the_outputs_exactly(family):
    model = make(family)
    grouped = family in ("llama", "mistral", "qwen2")
    sel = WidthSelection(
        heads=torch.arange(HEADS).repeat(LAYERS, 1),
        kv_heads=torch.arange(2).repeat(LAYERS, 1) if grouped else None,
        neurons=torch.arange(INTER).repeat(LAYERS, 1),
        hidden=torch.arange(HIDDEN),
    )
    copy = apply_width(model, sel)
    assert type(copy) is type(model) and copy is not model
    for batch in batches(labels=False):
        assert torch.equal(logits(copy, batch), logits(model, batch))
    with torch.no_grad():  # a new model: nothing is shared with the original
        next(copy.parameters()).add_(1.0)
    assert not torch.equal(next(copy.parameters()), next(model.parameters()))


def test_keep_heads_ranks_groups_then_heads_within_them():
    scores = torch.tensor([[1.0, 5.0, 2.0, 0.0]])  # groups of 2: sums 6 and 2
    heads, groups = keep_heads(scores, 2, group_size=2)
    assert heads.tolist() == [[0, 1]] and groups.tolist() == [[0]]
    heads, groups = keep_heads(scores, 2, group_size=2, groups=2)
    assert heads.tolist() == [[1, 2]] and groups.tolist() == [[0, 1]]
    heads, _ = keep_heads(scores, 3)
    assert heads.tolist() == [[0, 1, 2]]


def _scale_value_rows(attn_value: torch.nn.Linear, head: int, factor: float) -> None:
    with torch.no_grad():
        attn_value.weight[channels([head])] *= factor
        if attn_value.bias is not None:
            attn_value.bias[channels([head])] *= factor


def test_activation_importance_prefers_a_head_with_large_output():
    bert = make("bert")
    _scale_value_rows(bert.bert.encoder.layer[0].attention.self.value, 2, 10.0)
    assert head_importance(bert, batches())[0].argmax().item() == 2
    llama = make("llama")
    _scale_value_rows(
        llama.model.layers[1].self_attn.v_proj, 1, 10.0
    )  # key/value head 1 serves query heads 2, 3
    assert set(head_importance(llama, batches(labels=False))[1].topk(2).indices.tolist()) == {2, 3}


def _silence_heads_but(out_proj: torch.nn.Linear, keep: int) -> None:
    with torch.no_grad():
        for h in range(HEADS):
            if h != keep:
                out_proj.weight[:, channels([h])] = 0.0


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_gradient_importance_prefers_the_head_that_matters_for_the_loss(family):
    model = make(family)
    last = model.bert.encoder.layer[-1].attention if family == "bert" else model.model.layers[-1].self_attn
    out_proj = last.output.dense if family == "bert" else last.o_proj
    _silence_heads_but(out_proj, keep=1)  # only head 1 of the last layer reaches the loss
    value = last.self.value if family == "bert" else last.v_proj
    _scale_value_rows(value, 3 if family == "bert" else 1, 10.0)  # a loud head (or group) that cannot matter
    data = batches(labels=family == "bert")
    grad = head_importance(model, data, method="gradient")[-1]
    act = head_importance(model, data, method="activation")[-1]
    assert grad[1] > 0 and grad[[0, 2, 3]].eq(0).all()
    assert act.argmax().item() == (3 if family == "bert" else 2)


def _naive_gradient_importance(model, examples, loss_of) -> torch.Tensor:
    """Michel et al. eq. 2 by brute force: one example at a time, a (heads,) mask on each layer's context."""
    out_projs = (
        [layer.attention.output.dense for layer in model.bert.encoder.layer]
        if hasattr(model, "bert")
        else [layer.self_attn.o_proj for layer in model.model.layers]
    )
    total = torch.zeros(LAYERS, HEADS)
    for ids, label in examples:
        masks = [torch.ones(HEADS, requires_grad=True) for _ in out_projs]
        hooks = [
            proj.register_forward_pre_hook(
                lambda mod, args, m=m: ((args[0].unflatten(-1, (HEADS, HEAD_DIM)) * m[:, None]).flatten(-2),)
            )
            for proj, m in zip(out_projs, masks)
        ]
        loss = loss_of(model, ids[None], label)
        for h in hooks:
            h.remove()
        total += torch.stack([g.abs() for g in torch.autograd.grad(loss, masks)])
    return total / len(examples)


def _unpadded(data) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    out = []
    for b in data:
        for j in range(b["input_ids"].shape[0]):
            ids = b["input_ids"][j][b["attention_mask"][j].bool()]
            out.append((ids, b["labels"][j] if "labels" in b else None))
    return out


def test_gradient_importance_is_the_mean_over_examples_of_the_absolute_gradient():
    bert, data = make("bert"), batches(n=1)
    naive = _naive_gradient_importance(
        bert, _unpadded(data), lambda m, ids, y: F.cross_entropy(m(input_ids=ids).logits, y[None])
    )
    assert torch.allclose(head_importance(bert, data, method="gradient"), naive, rtol=1e-4, atol=1e-9)
    llama, data = make("llama"), batches(labels=False, n=1)
    naive = _naive_gradient_importance(
        llama, _unpadded(data), lambda m, ids, y: m(input_ids=ids, labels=ids).loss
    )
    assert torch.allclose(head_importance(llama, data, method="gradient"), naive, rtol=1e-4, atol=1e-9)


def _naive_activation_scores(model, examples, modules, output: bool = False) -> list[torch.Tensor]:
    """Per module: sqrt(mean over examples of (mean over tokens of |x|)^2), one unpadded example at a time."""
    rows = {i: [] for i in range(len(modules))}
    for ids, _ in examples:
        seen = {}
        hooks = [
            m.register_forward_hook(lambda mod, a, o, i=i, seen=seen: seen.__setitem__(i, o))
            if output
            else m.register_forward_pre_hook(lambda mod, a, i=i, seen=seen: seen.__setitem__(i, a[0]))
            for i, m in enumerate(modules)
        ]
        with torch.no_grad():
            model(input_ids=ids[None])
        for h in hooks:
            h.remove()
        for i, x in seen.items():
            rows[i].append(x[0].abs().mean(0))
    return [torch.stack(rows[i]).pow(2).mean(0).sqrt() for i in range(len(modules))]


def test_activation_importance_matches_a_naive_per_example_computation():
    bert, data = make("bert"), batches(n=1)
    examples, layers = _unpadded(data), bert.bert.encoder.layer
    ctx = _naive_activation_scores(bert, examples, [layer.attention.output.dense for layer in layers])
    naive_heads = torch.stack([c.view(HEADS, HEAD_DIM).norm(dim=-1) for c in ctx])
    naive_neurons = torch.stack(
        _naive_activation_scores(bert, examples, [layer.output.dense for layer in layers])
    )
    norms = [bert.bert.embeddings.LayerNorm] + [
        m for layer in layers for m in (layer.attention.output.LayerNorm, layer.output.LayerNorm)
    ]
    naive_hidden = torch.stack(_naive_activation_scores(bert, examples, norms, output=True)).sum(0)
    got = width_importance(bert, data, hidden=True)
    assert torch.allclose(got.heads, naive_heads, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.neurons, naive_neurons, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.hidden, naive_hidden, rtol=1e-5, atol=1e-6)
    assert torch.equal(neuron_importance(bert, data), got.neurons)
    assert torch.equal(hidden_importance(bert, data), got.hidden)


def ffn(model, layer: int) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """(first FFN projection, FFN output projection) of a BERT or Llama layer."""
    if hasattr(model, "bert") or hasattr(model, "mpnet"):
        block = model.base_model.encoder.layer[layer]
        return block.intermediate.dense, block.output.dense
    return model.model.layers[layer].mlp.gate_proj, model.model.layers[layer].mlp.down_proj


@pytest.mark.parametrize("family", ["bert", "mpnet", "llama"])
def test_pruning_dead_ffn_neurons_leaves_the_outputs_unchanged(family):
    model, data = make(family), batches(labels=False)
    dead = torch.tensor([3, 7, 8, 20, 40, 47])
    alive = [n for n in range(INTER) if n not in dead.tolist()]
    for i in range(LAYERS):
        ffn_in, ffn_out = ffn(model, i)
        with torch.no_grad():  # activation 0 (gelu(0) = 0; silu(0) * up = 0), output columns 0
            ffn_in.weight[dead] = 0.0
            if ffn_in.bias is not None:
                ffn_in.bias[dead] = 0.0
            ffn_out.weight[:, dead] = 0.0
    scores = neuron_importance(model, data)
    assert scores[:, dead].eq(0).all() and scores[:, alive].gt(0).all()
    pruned = prune_width(model, WidthImportance(neurons=scores), intermediate_size=len(alive))
    for i in range(LAYERS):
        assert torch.equal(ffn(pruned, i)[1].weight, ffn(model, i)[1].weight[:, alive])
    for batch in data:
        assert torch.equal(logits(pruned, batch), logits(model, batch))


@pytest.mark.parametrize(
    "family", ["bert", "roberta", "xlm-roberta", "electra", "mpnet", "llama", "mistral", "qwen2"]
)
def test_pruned_model_saves_and_reloads_as_a_plain_transformers_model(family, tmp_path):
    model, encoder = make(family), family in ("bert", "roberta", "xlm-roberta", "electra", "mpnet")
    data = batches(labels=encoder)
    imp = width_importance(model, data, hidden=True, head_method="gradient")
    if encoder:  # heads and hidden width together: 2 heads x 8 = 16 channels
        sizes = dict(heads=2, intermediate_size=24)
        expect = dict(hidden_size=16, num_attention_heads=2, intermediate_size=24)
    else:  # one whole key/value group; hidden channels on their own
        sizes = dict(heads=2, intermediate_size=24, hidden_size=16)
        expect = dict(
            hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8, intermediate_size=24
        )
    pruned = prune_width(model, imp, **sizes)
    pruned.save_pretrained(tmp_path)
    auto = AutoModelForSequenceClassification if encoder else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert {k: getattr(loaded.config, k) for k in expect} == expect
    assert sum(p.numel() for p in loaded.parameters()) == parameters_for(model, **sizes)
    for batch in data:
        assert torch.equal(logits(loaded, batch), logits(pruned, batch))


def test_mpnet_keeps_the_same_heads_in_every_layer_and_their_relative_position_bias():
    """MPNet's relative position bias is one (buckets, heads) table all blocks share: the heads kept are those
    with the highest importance summed over the layers, the same in each layer, and the table keeps their
    columns (the pruned model's position bias is the original's for those heads)."""
    model = make("mpnet")
    scores = torch.tensor([[5.0, 0.0, 1.0, 2.0], [0.0, 4.0, 0.5, 2.5]])  # sums 5, 4, 1.5, 4.5
    pruned = prune_width(model, WidthImportance(heads=scores, hidden=torch.arange(HIDDEN).float()), heads=2)
    kept = [0, 3]
    hid = torch.arange(HIDDEN - 16, HIDDEN)  # the 16 highest-scoring channels
    old, new = model.mpnet.encoder, pruned.mpnet.encoder
    assert same(new.relative_attention_bias.weight, old.relative_attention_bias.weight[:, kept])
    for i in range(LAYERS):
        for name in ("q", "k", "v"):
            got = getattr(new.layer[i].attention.attn, name).weight
            assert same(got, getattr(old.layer[i].attention.attn, name).weight[channels(kept)][:, hid])
        assert same(
            new.layer[i].attention.attn.o.weight, old.layer[i].attention.attn.o.weight[hid][:, channels(kept)]
        )
    ids = torch.arange(5, 12)[None]
    with torch.no_grad():
        bias_old = old.compute_position_bias(model.mpnet.embeddings(ids))
        bias_new = new.compute_position_bias(pruned.mpnet.embeddings(ids))
    assert torch.equal(bias_new, bias_old[:, kept])
    for batch in batches(labels=False):
        assert logits(pruned, batch).shape == (4, 2)
    per_layer = WidthSelection(heads=torch.tensor([[0, 3], [1, 3]]), hidden=hid)
    with pytest.raises(ModelError, match="shares one relative position bias column per head") as err:
        apply_width(model, per_layer)
    _one_line(err)


def test_tied_embeddings_stay_tied():
    model = make("llama", tie_word_embeddings=True)
    sel = WidthSelection(hidden=random_subset(HIDDEN, 16, 6))
    pruned = apply_width(model, sel)
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert same(pruned.lm_head.weight, model.model.embed_tokens.weight[:, sel.hidden])


def test_parameters_for_counts_what_pruning_makes():
    bert, data = make("bert"), batches()
    imp = width_importance(bert, data, hidden=True)
    for sizes in (dict(intermediate_size=24), dict(heads=3, intermediate_size=40), dict(hidden_size=16)):
        pruned = prune_width(bert, imp, **sizes)
        assert sum(p.numel() for p in pruned.parameters()) == parameters_for(bert, **sizes)
    assert parameters_for(bert) == sum(p.numel() for p in bert.parameters())


def test_width_for_parameter_target_shrinks_the_ffn_first_then_heads():
    bert = make("bert")
    full = parameters_for(bert)
    ffn_only = width_for_parameter_target(bert, full - 2000, multiple_of=8)
    assert (ffn_only.heads, ffn_only.hidden_size) == (HEADS, HIDDEN)
    fits = parameters_for(bert, intermediate_size=ffn_only.intermediate_size)
    wider = parameters_for(bert, intermediate_size=ffn_only.intermediate_size + 8)
    assert fits <= full - 2000 < wider
    small = width_for_parameter_target(bert, 8000, multiple_of=8)
    assert small.hidden_size == small.heads * HEAD_DIM and small.intermediate_size >= small.hidden_size
    assert parameters_for(bert, heads=small.heads, intermediate_size=small.intermediate_size) <= 8000
    more_heads = small.heads + 1  # with one head more, even an FFN as wide as the hidden width does not fit
    assert parameters_for(bert, heads=more_heads, intermediate_size=more_heads * HEAD_DIM) > 8000
    llama = make("llama")
    assert width_for_parameter_target(llama, 16000, multiple_of=8).heads in (2, 4)
    with pytest.raises(ModelError, match="target_parameters .1000. is below"):
        width_for_parameter_target(llama, 1000, multiple_of=8)


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 320
    return msg


@pytest.mark.parametrize(
    "family, sizes, message",
    [
        ("bert", dict(intermediate_size=100), r"intermediate_size \(100\) is larger than the model's 48"),
        ("bert", dict(heads=5), r"heads \(5\) is larger than the model's 4 attention heads"),
        ("bert", dict(heads=0), r"student.width.heads must be at least 1, got 0"),
        ("bert", dict(intermediate_size=0), r"intermediate_size must be at least 1, got 0"),
        ("bert", dict(heads=2.5), r"student.width.heads must be a whole number"),
        (
            "bert",
            dict(heads=3, hidden_size=16),
            r"heads \(3\) does not divide student.width.hidden_size \(16\)",
        ),
        ("bert", dict(heads=4, hidden_size=16), r"would change the head size from 8 to 4"),
        ("bert", dict(hidden_size=20), r"must be a multiple of the head size 8"),
        ("bert", dict(kv_heads=2), r"kv_heads applies to grouped-query attention"),
        ("llama", dict(heads=3), r"heads \(3\) must be a multiple of 2, the query heads per key/value group"),
        ("llama", dict(heads=4, kv_heads=1), r"at most 2 query heads per key/value head"),
        ("llama", dict(hidden_size=18), r"transformers rejects the pruned LlamaConfig: .*not a multiple"),
    ],
)
def test_bad_widths_are_refused_in_one_line(family, sizes, message):
    model = make(family)
    with pytest.raises(ModelError, match=message) as err:
        parameters_for(model, **sizes)
    _one_line(err)


def test_unsupported_architectures_and_missing_inputs_are_refused_in_one_line():
    distil = DistilBertForSequenceClassification(
        DistilBertConfig(
            vocab_size=VOCAB, dim=16, n_heads=2, hidden_dim=32, n_layers=2, max_position_embeddings=40
        )
    )
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=40))
    for model, kind in ((distil, "distilbert"), (gpt2, "gpt2")):
        with pytest.raises(
            ModelError, match=f"supports bert, electra, llama.*got model type '{kind}'"
        ) as err:
            prune_width(model, WidthImportance(), intermediate_size=8)
        _one_line(err)
    bert = make("bert")
    with pytest.raises(ModelError, match="needs 'neurons' importance") as err:
        prune_width(bert, WidthImportance(), intermediate_size=24)
    _one_line(err)
    with pytest.raises(ModelError, match="gradient method needs labelled batches") as err:
        head_importance(bert, batches(labels=False), method="gradient")
    _one_line(err)
    with pytest.raises(ModelError, match="importance must be one of activation, gradient, got 'taylor'"):
        head_importance(bert, batches(), method="taylor")
    with pytest.raises(ModelError, match="selection 'heads' must hold distinct indices"):
        apply_width(bert, WidthSelection(heads=torch.tensor([[0, 0], [1, 2]]), hidden=torch.arange(16)))
