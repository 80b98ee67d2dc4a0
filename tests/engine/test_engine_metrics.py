"""Metrics sanity: known answers for perfect, uninformative and memorising models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from worker.engine.architectures import Classifier
from worker.engine.methods import UnlearningData
from worker.engine.metrics import (
    DivergedModelError,
    accuracy,
    evaluate,
    js_divergence,
    mia_efficacy,
    mia_efficacy_from_logits,
    predict_logits,
)

CPU = torch.device("cpu")
K = 4


class LookupModel(Classifier):
    """Inputs are ``[memorised flag, one-hot label]``: confident and right on memorised rows,
    uniform elsewhere, the caricature of an overfit model a membership attack should expose."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.classifier = nn.Linear(K + 1, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * x[:, :1] * x[:, 1:]


def rows(labels: torch.Tensor, memorised: bool) -> torch.Tensor:
    flag = torch.full((len(labels), 1), float(memorised))
    return torch.cat([flag, nn.functional.one_hot(labels, K).float()], dim=1)


class TinyClassifier(Classifier):
    def __init__(self, features: nn.Module, classifier: nn.Linear):
        super().__init__()
        self.features, self.classifier = features, classifier


def perfect_model() -> Classifier:
    """Reads the label off the one-hot part of ``rows``."""
    head = nn.Linear(K + 1, K)
    with torch.no_grad():
        head.weight.copy_(torch.cat([torch.zeros(K, 1), 10 * torch.eye(K)], dim=1))
        head.bias.zero_()
    return TinyClassifier(nn.Identity(), head)


def labels(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))


def test_accuracy_of_a_perfect_model_is_one():
    y = labels(100, 0)
    assert accuracy(perfect_model(), rows(y, True), y, CPU) == 1.0
    assert accuracy(perfect_model(), rows(y, True), (y + 1) % K, CPU) == 0.0


def test_accuracy_of_nothing_is_undefined():
    assert accuracy(perfect_model(), torch.empty(0, K + 1), torch.empty(0, dtype=torch.long),
                    CPU) is None


def test_predict_logits_batches_and_restores_mode():
    model = TinyClassifier(nn.Dropout(0.5), nn.Linear(3, 2)).train()
    x = torch.randn(10, 3)
    logits = predict_logits(model, x, CPU, batch_size=3)
    torch.testing.assert_close(logits, model.classifier(x).detach())  # dropout was off
    assert model.training


def test_mia_separates_a_memorising_model():
    model, y_r, y_t, y_f = LookupModel(), labels(300, 1), labels(300, 2), labels(100, 3)
    forget_memorised = mia_efficacy(model, rows(y_r, True), y_r, rows(y_t, False), y_t,
                                    rows(y_f, True), y_f, CPU, seed=0)
    forget_unseen = mia_efficacy(model, rows(y_r, True), y_r, rows(y_t, False), y_t,
                                 rows(y_f, False), y_f, CPU, seed=0)
    assert forget_memorised == 0.0  # every forget row looks like a member
    assert forget_unseen == 1.0


def test_mia_on_identical_distributions_is_a_coin_toss():
    def draw(generator):
        return torch.randn(400, K, generator=generator) * 2, torch.randint(0, K, (400,),
                                                                           generator=generator)

    scores = []
    for seed in range(8):
        generator = torch.Generator().manual_seed(seed)
        scores.append(mia_efficacy_from_logits(draw(generator), draw(generator), draw(generator),
                                               seed=seed))
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert 0.35 < sum(scores) / len(scores) < 0.65


def test_mia_on_a_diverged_model_says_so():
    labels = torch.zeros(10, dtype=torch.long)
    fine, diverged = torch.zeros(10, K), torch.full((10, K), float("nan"))
    with pytest.raises(DivergedModelError, match="diverged"):
        mia_efficacy_from_logits((fine, labels), (fine, labels), (diverged, labels), seed=0)


def test_js_divergence():
    p = torch.randn(50, K)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    q = torch.randn(50, K)
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    # Disjoint certain predictions: the maximum, ln 2 nats per sample.
    certain_a = torch.tensor([[50.0, 0, 0, 0]]).repeat(3, 1)
    certain_b = torch.tensor([[0, 50.0, 0, 0]]).repeat(3, 1)
    assert js_divergence(certain_a, certain_b) == pytest.approx(math.log(2), rel=1e-6)
    assert js_divergence(torch.empty(0, K), torch.empty(0, K)) is None
    with pytest.raises(ValueError, match="shapes differ"):
        js_divergence(p, q[:3])


def _class_forgetting_data() -> UnlearningData:
    y_train, y_test = labels(200, 4), labels(60, 5)
    in_forget = y_train == 0
    return UnlearningData(
        x_train=rows(y_train, True), y_train=y_train, x_test=rows(y_test, False), y_test=y_test,
        forget_idx=torch.nonzero(in_forget).squeeze(1),
        retain_idx=torch.nonzero(~in_forget).squeeze(1), num_classes=K, forget_classes=[0])


def test_evaluate_reports_fractions_and_caps_retain_rows():
    data = _class_forgetting_data()
    scores = evaluate(LookupModel(), data, CPU, seed=0, max_eval=50)
    assert set(scores) == {"forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy"}
    assert scores["forget_accuracy"] == 1.0 and scores["retain_accuracy"] == 1.0
    assert scores["test_accuracy"] < 1.0  # uniform logits: argmax is class 0
    assert scores["mia_efficacy"] == 0.0
    assert evaluate(LookupModel(), data, CPU, seed=0, max_eval=50) == scores
