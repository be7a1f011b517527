"""Published recipes as config presets. Each is a partial config laid under the user's own keys
(``distill.method: NAME``); anything the user writes wins. Formulas, defaults and papers:
``docs/methods.md``. Layer indices are 0-based; -1 is the last layer.
"""

from __future__ import annotations

_LAST = {"teacher_layer": -1, "student_layer": -1}

PRESETS: dict[str, dict] = {
    # Sanh et al. 2019 (DistilBERT), task-specific part: soft targets (T=2) + hard labels + cosine between
    # the last hidden states; the student keeps every other teacher layer. Weights as the DistilBERT
    # training code (alpha_ce 5, alpha_cos 1) with the hard-label loss in the place of the MLM loss (2).
    "distilbert": {
        "student": {"keep_every": 2},
        "distill": {
            "temperature": 2.0,
            "losses": {"kd": 5.0, "ce": 2.0},
            "matches": [{"feature": "hidden", "loss": "cosine", "weight": 1.0, **_LAST}],
        },
    },
    # Sun et al. 2019 (Patient KD), eq. 5: (1 - alpha) CE + alpha L_DS + beta L_PT, alpha 0.7, beta 500,
    # T 10; L_DS is the soft cross-entropy without T^2; L_PT the normalised [CLS] distance on the
    # intermediate layers, PKD-Skip pairs student layer i with teacher layer (i+1)*N/n - 1.
    "pkd-skip": {
        "distill": {
            "temperature": 10.0,
            "kd_scale_t2": False,
            "losses": {"kd": 0.7, "ce": 0.3},
            "matches": [{"feature": "cls", "loss": "cls_mse", "weight": 500.0, "strategy": "skip"}],
        },
    },
    # PKD-Last: the intermediate student layers learn from the teacher's last n-1 layers before the top.
    "pkd-last": {
        "distill": {
            "temperature": 10.0,
            "kd_scale_t2": False,
            "losses": {"kd": 0.7, "ce": 0.3},
            "matches": [{"feature": "cls", "loss": "cls_mse", "weight": 500.0, "strategy": "last"}],
        },
    },
    # Jiao et al. 2020 (TinyBERT), task-specific distillation in two stages: (1) embedding-layer and
    # transformer-layer distillation (hidden MSE through a learned projection, attention-score MSE), uniform
    # layer mapping; (2) prediction-layer distillation: soft cross-entropy at T=1.
    "tinybert": {
        "distill": {
            "temperature": 1.0,
            "stages": [
                {
                    "name": "intermediate",
                    "losses": {},
                    "matches": [
                        {"feature": "embeddings", "loss": "mse"},
                        {"feature": "hidden", "loss": "mse", "strategy": "uniform"},
                        {"feature": "attention_scores", "loss": "mse", "strategy": "uniform"},
                    ],
                },
                {"name": "prediction", "losses": {"kd": 1.0}, "temperature": 1.0},
            ],
        },
    },
    # Wang et al. 2020 (MiniLM): the student's last layer learns the teacher's last-layer self-attention
    # distributions and value relation (KL); then the student is fine-tuned on the task.
    "minilm": {
        "distill": {
            "stages": [
                {
                    "name": "attention-transfer",
                    "losses": {},
                    "matches": [
                        {"feature": "attention", "loss": "kl", **_LAST},
                        {"feature": "vv", "loss": "kl", **_LAST},
                    ],
                },
                {"name": "finetune", "losses": {"ce": 1.0}},
            ],
        },
    },
    # Wang et al. 2021 (MiniLMv2): query-query, key-key and value-value relations (KL) from one teacher layer
    # (default: the last; the paper uses an upper-middle layer of large teachers) into the student's last
    # layer, with relation heads shared by both sides; then the student is fine-tuned on the task.
    "minilmv2": {
        "distill": {
            "stages": [
                {
                    "name": "relation-transfer",
                    "losses": {},
                    "matches": [
                        {"feature": "qq", "loss": "kl", **_LAST},
                        {"feature": "kk", "loss": "kl", **_LAST},
                        {"feature": "vv", "loss": "kl", **_LAST},
                    ],
                },
                {"name": "finetune", "losses": {"ce": 1.0}},
            ],
        },
    },
}

# The same papers' recipes in their task-agnostic form: with ``task: mlm`` or ``task: general``,
# ``distill.method`` names the paper and the task picks the phase (pre-training distillation on raw text).
# These tasks know only these recipes (their `presets` attribute); the others use PRESETS.
TASK_PRESETS: dict[str, dict[str, dict]] = {
    "mlm": {
        # Sanh et al. 2019 (DistilBERT), pre-training: L = 5.0 L_ce (soft targets on the MLM logits, T=2)
        # + 2.0 L_mlm + 1.0 L_cos (last hidden states), the weights of the DistilBERT training code; the student
        # keeps every other teacher layer.
        "distilbert": {
            "student": {"keep_every": 2},
            "distill": {"temperature": 2.0, "losses": {"kd": 5.0, "mlm": 2.0, "cos": 1.0}},
        },
    },
    "general": {
        # Jiao et al. 2020 (TinyBERT), general distillation: embedding-layer and transformer-layer distillation
        # (hidden MSE through a learned projection when widths differ, attention-score MSE), uniform layer map,
        # no prediction layer; weights 1.
        "tinybert": {
            "distill": {
                "matches": [
                    {"feature": "embeddings", "loss": "mse"},
                    {"feature": "hidden", "loss": "mse", "strategy": "uniform"},
                    {"feature": "attention_scores", "loss": "mse", "strategy": "uniform"},
                ],
            },
        },
        # Wang et al. 2021 (MiniLMv2): Q-Q, K-K and V-V self-attention relations (KL) of the teacher's last layer
        # (set teacher_layer for an upper-middle one) into the student's last layer, relation heads shared.
        "minilmv2": {
            "distill": {
                "matches": [
                    {"feature": "qq", "loss": "kl", **_LAST},
                    {"feature": "kk", "loss": "kl", **_LAST},
                    {"feature": "vv", "loss": "kl", **_LAST},
                ],
            },
        },
    },
}
