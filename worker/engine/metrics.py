"""How well a model forgot: accuracies, membership-inference efficacy, JS divergence.

Definitions follow ``methods.md``. Every score is a fraction in [0, 1]. A score over an empty
set is ``None``: "undefined" must not read as a real (terrible or perfect) 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn

from worker.engine.architectures._base import output_classes
from worker.engine.device import eval_batch_size, image_layout, on_gpu

if TYPE_CHECKING:  # importing at run time would be circular (methods -> training -> metrics)
    from worker.engine.methods import UnlearningData

DEFAULT_MAX_EVAL = 10_000
DEFAULT_MIA_SAMPLES = 5_000
# SalUn's attack is an RBF SVC, whose fit grows with the square of its rows: cap each side.
SALUN_MIA_MAX_ROWS = 5_000
MEMBER, NON_MEMBER = 1, 0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (frozen BatchNorm, no dropout) for the block, then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device,
                   batch_size: int | None = None) -> torch.Tensor:
    """Logits for every row of ``x`` as float32 on the CPU; moves ``model`` to ``device``.
    Batches of 512 rows on a CPU, ``eval_batch_size`` on a GPU (images channels-last there);
    float32 everywhere (no autocast: these are the reported figures)."""
    model.to(device)
    if len(x) == 0:
        return torch.empty(0, output_classes(model))
    batch_size = batch_size or eval_batch_size(device, 512)
    gpu = on_gpu(device)
    with _eval_mode(model), torch.inference_mode():
        batches = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            batches.append(model(image_layout(xb) if gpu else xb).float().cpu())
    return torch.cat(batches)


def accuracy_from_logits(logits: torch.Tensor, y: torch.Tensor) -> float | None:
    if len(y) == 0:
        return None
    return (logits.argmax(dim=1) == y.cpu()).float().mean().item()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             device: torch.device) -> float | None:
    """Share of rows whose predicted class is the label; None for no rows."""
    return accuracy_from_logits(predict_logits(model, x, device), y)


class DivergedModelError(FloatingPointError):
    """The model's outputs are not finite: the unlearning run diverged."""


def ensure_finite(logits: torch.Tensor) -> torch.Tensor:
    """The logits, unchanged; DivergedModelError when any is NaN or infinite."""
    if not torch.isfinite(logits).all():
        raise DivergedModelError(
            "the unlearned model outputs NaN or infinity: the method diverged; run it again "
            "with a lower learning rate")
    return logits


def mia_features(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per sample: the true class's softmax confidence and the output entropy (``N×2``)."""
    ensure_finite(logits)
    probs = F.softmax(logits.double(), dim=1)
    confidence = probs.gather(1, y.cpu().long()[:, None]).squeeze(1)
    entropy = torch.special.entr(probs).sum(dim=1)
    return torch.stack([confidence, entropy], dim=1).numpy()


def _sample_rows(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=size, replace=False))


def mia_efficacy_from_logits(
    retain: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    forget: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int,
    max_samples: int = DEFAULT_MIA_SAMPLES,
) -> float | None:
    """MIA-efficacy from ``(logits, labels)`` pairs: train a member/non-member attack on equal
    samples of retain and test rows, return the share of forget rows it calls non-member."""
    (retain_logits, y_retain), (test_logits, y_test), (forget_logits, y_forget) = (
        retain, test, forget)
    if min(len(y_retain), len(y_test), len(y_forget)) == 0:
        return None
    n = min(len(y_retain), len(y_test), max_samples)
    rng = np.random.default_rng(seed)
    members = mia_features(retain_logits, y_retain)[_sample_rows(len(y_retain), n, rng)]
    non_members = mia_features(test_logits, y_test)[_sample_rows(len(y_test), n, rng)]
    attack = make_pipeline(StandardScaler(), LogisticRegression())
    attack.fit(np.concatenate([members, non_members]),
               np.concatenate([np.full(n, MEMBER), np.full(n, NON_MEMBER)]))
    predicted = attack.predict(mia_features(forget_logits, y_forget))
    return float((predicted == NON_MEMBER).mean())


def mia_efficacy(
    model: nn.Module,
    x_retain: torch.Tensor, y_retain: torch.Tensor,
    x_test: torch.Tensor, y_test: torch.Tensor,
    x_forget: torch.Tensor, y_forget: torch.Tensor,
    device: torch.device,
    seed: int,
    max_samples: int = DEFAULT_MIA_SAMPLES,
) -> float | None:
    """Share of the forget set a membership-inference attack calls non-member (methods.md)."""
    # Only the rows the attack will train on need predicting.
    rng = np.random.default_rng(seed)
    retain_rows = _sample_rows(len(y_retain), min(len(y_retain), max_samples), rng)
    test_rows = _sample_rows(len(y_test), min(len(y_test), max_samples), rng)
    return mia_efficacy_from_logits(
        (predict_logits(model, x_retain[retain_rows], device), y_retain[retain_rows]),
        (predict_logits(model, x_test[test_rows], device), y_test[test_rows]),
        (predict_logits(model, x_forget, device), y_forget),
        seed=seed, max_samples=max_samples)


def true_class_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per sample, the softmax probability of the true class (``N×1``): SalUn's one feature."""
    return mia_features(logits, y)[:, :1]


def salun_attack() -> SVC:
    """SalUn's membership attack exactly: ``SVC(C=3, gamma="auto", kernel="rbf")``, unscaled
    (on one feature, gamma "auto" is 1)."""
    return SVC(C=3, gamma="auto", kernel="rbf")


def salun_mia_efficacy_from_logits(
    retain: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    forget: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int,
    max_rows: int = SALUN_MIA_MAX_ROWS,
) -> float | None:
    """SalUn's reported MIA (``SVC_MIA_forget_efficacy['confidence']``, Fan et al., ICLR 2024)
    from ``(logits, labels)`` pairs, as methods.md states it.

    Non-members are every test row, members as many retain rows drawn at random (seeded;
    SalUn takes the first |D_t| rows, random only because of torchvision's CIFAR order). The
    attack sees the true-class confidence alone; the figure is the share of forget rows it
    predicts non-member. Unlike SalUn, each side is capped at ``max_rows`` (a seeded sample of
    the test rows beyond it), because the SVC's fit is quadratic in its rows.
    """
    (retain_logits, y_retain), (test_logits, y_test), (forget_logits, y_forget) = (
        retain, test, forget)
    if min(len(y_retain), len(y_test), len(y_forget)) == 0:
        return None
    rng = np.random.default_rng(seed)
    non_member_rows = _sample_rows(len(y_test), min(len(y_test), max_rows), rng)
    member_rows = _sample_rows(len(y_retain), min(len(y_retain), len(non_member_rows)), rng)
    members = true_class_confidence(retain_logits, y_retain)[member_rows]
    non_members = true_class_confidence(test_logits, y_test)[non_member_rows]
    attack = salun_attack()
    attack.fit(np.concatenate([members, non_members]),
               np.concatenate([np.full(len(members), MEMBER),
                               np.full(len(non_members), NON_MEMBER)]))
    predicted = attack.predict(true_class_confidence(forget_logits, y_forget))
    return float((predicted == NON_MEMBER).mean())


def salun_mia_efficacy(model: nn.Module, data: UnlearningData, device: torch.device,
                       seed: int, max_rows: int = SALUN_MIA_MAX_ROWS) -> float | None:
    """SalUn's MIA-efficacy of ``model`` on ``data``'s forget set (see
    ``salun_mia_efficacy_from_logits``); predicts only the rows the attack uses. Pass the data
    scores are taken on: after class forgetting, the test rows of the retained classes."""
    rng = np.random.default_rng(seed)
    test_rows = torch.from_numpy(_sample_rows(len(data.y_test), min(len(data.y_test), max_rows),
                                              rng))
    retain_rows = data.retain_idx[torch.from_numpy(
        _sample_rows(len(data.retain_idx), min(len(data.retain_idx), len(test_rows)), rng))]
    y_forget = data.y_train[data.forget_idx]
    return salun_mia_efficacy_from_logits(
        (predict_logits(model, data.x_train[retain_rows], device), data.y_train[retain_rows]),
        (predict_logits(model, data.x_test[test_rows], device), data.y_test[test_rows]),
        (predict_logits(model, data.x_train[data.forget_idx], device), y_forget),
        seed=seed, max_rows=max_rows)


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float | None:
    """Jensen-Shannon divergence of the two models' output distributions, in nats (at most
    ln 2): summed over classes, averaged over samples; None for no samples."""
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(p_logits.shape)} vs "
                         f"{tuple(q_logits.shape)}")
    if len(p_logits) == 0:
        return None
    log_p = F.log_softmax(p_logits.double(), dim=1)
    log_q = F.log_softmax(q_logits.double(), dim=1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=1)
    return (0.5 * (kl_pm + kl_qm)).mean().item()


def _subsample(idx: torch.Tensor, max_rows: int, seed: int) -> torch.Tensor:
    """At most ``max_rows`` of ``idx``, the same ones for the same seed."""
    if len(idx) <= max_rows:
        return idx
    keep = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:max_rows]
    return idx[keep.sort().values]


def evaluate(model: nn.Module, data: UnlearningData, device: torch.device, seed: int,
             max_eval: int = DEFAULT_MAX_EVAL) -> dict[str, float | None]:
    """Forget, retain and test accuracy and MIA-efficacy, as fractions.

    Retain and test rows are capped at ``max_eval`` (a seeded subsample) to bound the cost;
    the forget set is always scored in full.
    """
    retain_idx = _subsample(data.retain_idx, max_eval, seed)
    test_idx = _subsample(torch.arange(len(data.y_test)), max_eval, seed)
    y_forget, y_retain = data.y_train[data.forget_idx], data.y_train[retain_idx]
    y_test = data.y_test[test_idx]
    forget_logits = predict_logits(model, data.x_train[data.forget_idx], device)
    retain_logits = predict_logits(model, data.x_train[retain_idx], device)
    test_logits = predict_logits(model, data.x_test[test_idx], device)
    return {
        "forget_accuracy": accuracy_from_logits(forget_logits, y_forget),
        "retain_accuracy": accuracy_from_logits(retain_logits, y_retain),
        "test_accuracy": accuracy_from_logits(test_logits, y_test),
        "mia_efficacy": mia_efficacy_from_logits(
            (retain_logits, y_retain), (test_logits, y_test), (forget_logits, y_forget),
            seed=seed),
    }


def evaluate_with_salun_mia(model: nn.Module, data: UnlearningData, device: torch.device,
                            seed: int, max_eval: int = DEFAULT_MAX_EVAL
                            ) -> dict[str, float | None]:
    """``evaluate``'s figures (the same rows, the same values) plus SalUn's MIA-efficacy as
    ``salun_mia_efficacy``, all from one prediction per row: predicting is most of the cost.

    SalUn's members are drawn from the retain rows ``evaluate`` scores, so where D_r has more
    than ``max_eval`` rows the draw differs from ``salun_mia_efficacy``'s (equally random)."""
    retain_idx = _subsample(data.retain_idx, max_eval, seed)
    test_idx = _subsample(torch.arange(len(data.y_test)), max_eval, seed)
    forget = (predict_logits(model, data.x_train[data.forget_idx], device),
              data.y_train[data.forget_idx])
    retain = (predict_logits(model, data.x_train[retain_idx], device), data.y_train[retain_idx])
    test = (predict_logits(model, data.x_test[test_idx], device), data.y_test[test_idx])
    return {
        "forget_accuracy": accuracy_from_logits(*forget),
        "retain_accuracy": accuracy_from_logits(*retain),
        "test_accuracy": accuracy_from_logits(*test),
        "mia_efficacy": mia_efficacy_from_logits(retain, test, forget, seed=seed),
        "salun_mia_efficacy": salun_mia_efficacy_from_logits(retain, test, forget, seed=seed),
    }
