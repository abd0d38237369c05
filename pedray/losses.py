"""Loss functions as pure tensor functions: `(loss, metrics)` out, no Ray, no DeepSpeed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pedray.data.columns import IGNORE_INDEX


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the mask of positions that count.

    Args:
        logits: [B, T, V] model outputs.
        labels: [B, T] token ids, IGNORE_INDEX where no loss is taken (not yet shifted).

    Returns:
        logps [B, T-1] (0 where masked) and mask [B, T-1] (bool).
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    # log_softmax gathered at the target: logits[target] - logsumexp(logits), one pass over V.
    picked = torch.gather(logits, 2, safe.unsqueeze(-1)).squeeze(-1)
    logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return logps, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's labelled tokens and their count ([B], [B])."""
    logps, mask = token_logps(logits, labels)
    return logps.sum(-1), mask.sum(-1)


def labelled_sequence_logps(logits: torch.Tensor, targets: torch.Tensor,
                            keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` from logits computed only at the labelled positions: logits [N, V] and targets [N]
    at `keep` [B, T] (as `next_token_targets` gives them) -> summed log-probabilities and counts ([B], [B]).

    Same values as `sequence_logps` on the full logits (tested)."""
    picked = torch.gather(logits.float(), 1, targets.unsqueeze(-1)).squeeze(-1)
    token = picked - torch.logsumexp(logits.float(), dim=-1)
    rows = keep.nonzero()[:, 0]
    summed = torch.zeros(keep.shape[0], dtype=token.dtype, device=token.device).index_add(0, rows, token)
    return summed, keep.sum(-1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over labelled tokens (cpt, sft and mouse).

    Golden value: uniform logits over V tokens give log(V) whatever the labels.
    """
    logps, mask = token_logps(logits, labels)
    tokens = mask.sum().clamp(min=1)
    loss = -logps.sum() / tokens
    return loss, {"loss": loss.detach(), "tokens": mask.sum().detach()}


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a next-token loss is taken and what the targets are.

    Returns `keep` [B, T] (True at position t when token t+1 is labelled) and the targets [N] of the
    kept positions, in row-major order: what `labelled_lm_loss` takes with the logits at `keep`.
    """
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep, labels[:, 1:][keep[:, :-1]]


def labelled_lm_loss(logits: torch.Tensor, targets: torch.Tensor, unlikelihood: float = 0.0,
                     keep: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`causal_lm_loss` from logits computed only at the labelled positions ([N, V] against targets [N]).

    Same value as `causal_lm_loss` on the full logits (tested); without a labelled token it is 0.
    With `unlikelihood` > 0 (and `keep`, `position_ids`, as `unlikelihood_loss` takes them) the loss is
    the LM loss plus `unlikelihood` times `unlikelihood_loss`, both from one log-softmax over [N, V];
    `metrics["loss"]` stays the LM loss and the penalty is reported apart.
    """
    if targets.numel() == 0:
        loss = logits.sum() * 0.0
        metrics = {"loss": loss.detach(), "tokens": torch.tensor(0)}
        if unlikelihood > 0:
            metrics["unlikelihood"] = loss.detach()
        return loss, metrics
    logps = logits.float().log_softmax(-1)
    loss = F.nll_loss(logps, targets)
    metrics = {"loss": loss.detach(), "tokens": torch.tensor(targets.numel())}
    if unlikelihood <= 0:
        return loss, metrics
    penalty = _unlikelihood(logps, targets, keep, position_ids)
    metrics["unlikelihood"] = penalty.detach()
    return loss + unlikelihood * penalty, metrics


def unlikelihood_loss(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                      position_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level unlikelihood (Welleck et al., 2020, "Neural Text Generation with Unlikelihood
    Training", arXiv 1908.04319): at every labelled position, push down the probability of the tokens the
    answer already produced, other than the right one:

        L_UL = -(1/N) * sum_t sum_{c in C_t} log(1 - p_t(c)),  C_t = {y_s : s < t, same document} minus {y_t}

    A model that does not know the next item of a list otherwise puts its mass on the item it just
    wrote, and greedy decoding loops ("发热、发热、发热"). Prompts are not candidates (an answer may repeat
    the question's words); packed documents (position_ids restart at 0) do not share candidates.

    Golden value: one document, targets [0, 1, 0] over V = 3 with uniform logits: C = {}, {0}, {1}, so
    L = -(2 * log(2/3)) / 3 = 0.2703.

    Args:
        logits: [N, V] at the kept positions (row-major), as `labelled_lm_loss` takes them.
        targets: [N] next tokens at those positions.
        keep: [B, T] where a next-token loss is taken (`next_token_targets`).
        position_ids: [B, T] positions, restarting at 0 for every packed document.
    """
    if targets.numel() == 0:
        zero = logits.sum() * 0.0
        return zero, {"unlikelihood": zero.detach()}
    loss = _unlikelihood(logits.float().log_softmax(-1), targets, keep, position_ids)
    return loss, {"unlikelihood": loss.detach()}


def _unlikelihood(logps: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                  position_ids: torch.Tensor) -> torch.Tensor:
    """`unlikelihood_loss` from the log-probabilities [N, V] at the kept positions (N > 0)."""
    document = (position_ids == 0).cumsum(-1)  # [B, T] document index within each row
    rows = torch.arange(keep.shape[0], device=keep.device).unsqueeze(1).expand_as(keep)[keep]  # [N]
    docs = document[keep]  # [N]
    count, vocab = logps.shape
    order = torch.arange(count, device=targets.device)
    # earlier[i, j]: target j came before target i in the same row and document (row-major order keeps
    # each row's positions ascending)
    earlier = (rows[:, None] == rows[None, :]) & (docs[:, None] == docs[None, :]) & (order[None, :] < order[:, None])
    # The candidates as (position, token) pairs, each once: a few dozen per position against a vocabulary
    # of thousands, so p_t(c) is gathered where it counts. The dense form (a softmax, log1p and mask over
    # all of [N, V]) took a fifth of the demo's sft step; with this one, sharing the LM loss's log-softmax,
    # the step went from 497 to 416 ms against 373 without the term (one process, medians;
    # docs/model-quality.md). Same values and gradients (tested against the dense form).
    at, before = earlier.nonzero(as_tuple=True)
    pairs = torch.unique(at * vocab + targets[before])
    at, token = pairs // vocab, pairs % vocab
    wrong = token != targets[at]
    probs = logps[at[wrong], token[wrong]].exp()
    return -torch.log1p(-probs.clamp(max=1 - 1e-6)).sum() / count


def dfpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    beta: float = 0.1,
    mu: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct following preference optimisation (PediatricsGPT, arXiv 2405.19266, section 3.3).

    L = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])
        + mu * (-(1 / |y_w|) * log pi(y_w|x))

    The first term is DPO's sigmoid loss (Rafailov et al., 2023); the second, the length-normalised
    negative log-likelihood of the chosen answer, keeps the policy following the preferred answers
    so their likelihood does not collapse while the margin grows. mu = 0 gives plain DPO.

    Args:
        policy_*_logps, reference_*_logps: [B] summed log-probabilities of the answers.
        chosen_lengths: [B] number of answer tokens of each chosen answer.

    Returns:
        The batch-mean loss and metrics: reward accuracy and margin, chosen and rejected rewards
        and log-probabilities, and the two loss terms.
    """
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    preference = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    following = -policy_chosen_logps / chosen_lengths.clamp(min=1)
    loss = (preference + mu * following).mean()
    chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {
        "loss": loss.detach(),
        "preference_loss": preference.mean().detach(),
        "following_nll": following.mean().detach(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        "chosen_reward": chosen_rewards.mean(),
        "rejected_reward": rejected_rewards.mean(),
        "chosen_logps": policy_chosen_logps.detach().mean(),
        "rejected_logps": policy_rejected_logps.detach().mean(),
    }
    return loss, metrics


def load_balance_loss(gate_weights: torch.Tensor) -> torch.Tensor:
    """Load-balancing auxiliary loss for a mixture of experts (Switch Transformer style, soft form).

    T * sum_j f_j * P_j with f_j the share of tokens whose top expert is j and P_j the mean gate
    weight of expert j; equals 1 for a perfectly uniform load and grows as load concentrates.

    Args:
        gate_weights: [N, T] gate distribution of N tokens over T experts.
    """
    experts = gate_weights.shape[-1]
    flat = gate_weights.reshape(-1, experts)
    share = F.one_hot(flat.argmax(-1), experts).float().mean(0)
    mean_gate = flat.mean(0)
    return experts * (share * mean_gate).sum()


def mixture_lm_loss(logits: torch.Tensor, targets: torch.Tensor, gates: list[torch.Tensor],
                    mask: torch.Tensor | None = None, balance_coef: float = 0.0, unlikelihood: float = 0.0,
                    keep: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Causal LM loss plus the MoUSE load-balancing term: L = L_lm + c * mean_layers(balance(g_layer)).

    Args:
        logits, targets: at the labelled positions, as in `labelled_lm_loss`.
        gates: one [B, T, E] gate tensor per MoUSE layer (empty in eval: the LM loss alone).
        mask: [B, T] bool, the tokens whose routing counts (padding excluded); None counts all.
        balance_coef: c; 0 still reports the balance term without training on it.
        unlikelihood, keep, position_ids: the unlikelihood term, as `labelled_lm_loss` takes it.

    Returns:
        The loss and metrics: `loss` stays the LM loss (comparable with sft and held-out loss),
        `balance_loss` (1 = uniform load) and `gate_entropy` (nats, log E = uniform gates).
    """
    loss, metrics = labelled_lm_loss(logits, targets, unlikelihood, keep, position_ids)
    if not gates:
        return loss, metrics
    picked = [g if mask is None else g[mask] for g in gates]
    picked = [g.reshape(-1, g.shape[-1]) for g in picked if g.numel()]
    if not picked:
        return loss, metrics
    balance = torch.stack([load_balance_loss(g) for g in picked]).mean()
    entropy = torch.stack([-(g * g.clamp_min(1e-12).log()).sum(-1).mean() for g in picked]).mean()
    metrics.update(balance_loss=balance.detach(), gate_entropy=entropy.detach())
    return (loss + balance_coef * balance if balance_coef > 0 else loss), metrics
