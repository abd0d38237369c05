"""Losses: golden values, equivalence with TRL's sigmoid DPO, and DFPO's effect on a tiny model."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pedray.losses import (causal_lm_loss, dfpo_loss, labelled_lm_loss, labelled_sequence_logps, load_balance_loss, next_token_targets,
                           sequence_logps, token_logps)


def test_causal_lm_loss_golden_uniform_logits():
    """Uniform logits over V=5 tokens: every labelled token costs log 5 = 1.6094."""
    logits = torch.zeros(1, 4, 5)
    labels = torch.tensor([[-100, 1, 2, -100]])  # two labelled next tokens (positions 1 and 2)
    loss, metrics = causal_lm_loss(logits, labels)
    assert loss.item() == pytest.approx(math.log(5))
    assert metrics["tokens"].item() == 2


def test_token_logps_match_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    labels[0, :3] = -100
    logps, mask = token_logps(logits, labels)
    reference = -F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="none",
                                 ignore_index=-100).view(2, 5)
    torch.testing.assert_close(logps, reference * mask)
    total, count = sequence_logps(logits, labels)
    assert count.tolist() == [3, 5]


def test_labelled_sequence_logps_equal_sequence_logps_on_the_kept_logits():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 7, 13), torch.randint(0, 13, (4, 7))
    labels[0, :4] = -100
    labels[2, 2:5] = -100
    labels[3] = -100  # a row without a labelled token: 0 and 0
    keep, targets = next_token_targets(labels)
    full, count = sequence_logps(logits, labels)
    picked, lengths = labelled_sequence_logps(logits[keep], targets, keep)
    torch.testing.assert_close(picked, full)
    assert lengths.tolist() == count.tolist() == [3, 6, 3, 0]


def test_labelled_lm_loss_equals_causal_lm_loss_on_the_kept_logits():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 7, 13), torch.randint(0, 13, (3, 7))
    labels[0, :4] = -100
    labels[2, 2:5] = -100
    keep, targets = next_token_targets(labels)
    assert keep.sum().item() == targets.numel() == 3 + 6 + 3  # labelled tokens at t >= 1, per row
    full, _ = causal_lm_loss(logits, labels)
    picked, metrics = labelled_lm_loss(logits[keep], targets)
    torch.testing.assert_close(picked, full)
    assert metrics["tokens"].item() == targets.numel()
    empty, _ = labelled_lm_loss(torch.zeros(0, 13, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_output_head_on_labelled_positions_gives_the_same_loss_and_gradients(tiny_model_dir):
    """`head_only_at` runs the tiny model's head on the labelled positions only: same loss, same gradients."""
    from pedray.model.build import load_model
    from pedray.model.selective import head_only_at

    torch.manual_seed(0)
    model = load_model(tiny_model_dir)
    ids = torch.randint(5, 200, (2, 24))
    labels = ids.clone()
    labels[:, :10] = -100  # the prompt
    full, _ = causal_lm_loss(model(input_ids=ids).logits, labels)
    full.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    keep, targets = next_token_targets(labels)
    with head_only_at(model, keep):
        logits = model(input_ids=ids).logits
    assert logits.shape == (targets.numel(), model.config.vocab_size)
    picked, _ = labelled_lm_loss(logits, targets)
    picked.backward()
    torch.testing.assert_close(picked, full)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert model(input_ids=ids).logits.shape == (2, 24, model.config.vocab_size)  # the hook is gone after


def test_dfpo_golden_values():
    """beta=0.5, chosen ratio 1 - 0 = 1, rejected ratio -1 - 0 = -1: preference = -log sigmoid(0.5 * 2)
    = 0.31326; following = -(-4) / 2 = 2; with mu = 0.5 the loss is 0.31326 + 1 = 1.31326."""
    loss, metrics = dfpo_loss(torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.0]),
                              torch.tensor([2]), beta=0.5, mu=0.5)
    assert loss.item() == pytest.approx(0.313262 + 1.0, abs=1e-5)
    assert metrics["reward_accuracy"].item() == 1.0
    assert metrics["reward_margin"].item() == pytest.approx(1.0)
    assert metrics["following_nll"].item() == pytest.approx(2.0)


def _trl_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, beta, loss_types, loss_weights):
    """TRL 1.16's own DPOTrainer._compute_loss, run on given per-token log-probs.

    TRL keeps its losses inside the trainer method; a stand-in `self` and model output carry exactly
    the attributes that method reads, so the arithmetic under test is TRL's, line for line.
    """
    from trl import DPOTrainer

    batch, width = completion_mask.shape

    class Model(torch.nn.Module):
        def forward(self, **kwargs):
            zeros = torch.zeros(batch, width - 1)
            return SimpleNamespace(log_probs=per_token_logps, entropy=zeros, mean_logits=zeros,
                                   is_top1=torch.zeros(batch, width - 1, dtype=torch.bool))

    identity = SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=Model(), accelerator=identity, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=loss_types, loss_weights=loss_weights, beta=beta,
        use_weighting=False, label_smoothing=0.0, _metrics={"train": defaultdict(list)}, _total_train_tokens=0,
        _tp_size=1)
    inputs = {"input_ids": torch.zeros(batch, width, dtype=torch.long), "attention_mask": torch.ones(batch, width),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)


def _pairs(lengths):
    torch.manual_seed(1)
    pairs, width = len(lengths) // 2, max(lengths) + 1
    mask = torch.zeros(2 * pairs, width)
    for row, length in enumerate(lengths):
        mask[row, 1:length + 1] = 1
    per_token = -torch.rand(2 * pairs, width - 1) * 3 * mask[:, 1:]
    ref = -torch.rand(2 * pairs) * 10
    return per_token, mask, ref[:pairs], ref[pairs:]


def test_dfpo_with_mu_zero_equals_trl_sigmoid_dpo():
    per_token, mask, ref_chosen, ref_rejected = _pairs([3, 5, 2, 4, 6, 1])
    logps, lengths = per_token.sum(1), mask[:, 1:].sum(1)
    ours, _ = dfpo_loss(logps[:3], logps[3:], ref_chosen, ref_rejected, lengths[:3], beta=0.2, mu=0.0)
    trl = _trl_loss(per_token, mask, ref_chosen, ref_rejected, 0.2, ["sigmoid"], [1.0])
    torch.testing.assert_close(ours, trl)


def test_dfpo_equals_trl_sigmoid_plus_sft_when_chosen_lengths_agree():
    """TRL's `sft` term averages over all chosen tokens of the batch; ours averages per answer first
    (the paper's length normalisation). With equal chosen lengths the two coincide."""
    per_token, mask, ref_chosen, ref_rejected = _pairs([4, 4, 4, 2, 5, 3])
    logps, lengths = per_token.sum(1), mask[:, 1:].sum(1)
    ours, _ = dfpo_loss(logps[:3], logps[3:], ref_chosen, ref_rejected, lengths[:3], beta=0.1, mu=0.7)
    trl = _trl_loss(per_token, mask, ref_chosen, ref_rejected, 0.1, ["sigmoid", "sft"], [1.0, 0.7])
    torch.testing.assert_close(ours, trl)


def test_load_balance_loss_is_one_when_uniform_and_larger_when_skewed():
    uniform = torch.full((8, 4), 0.25)
    uniform_top = torch.eye(4).repeat(2, 1) * 0.01 + 0.2475  # argmax spread over all experts
    assert load_balance_loss(uniform_top).item() == pytest.approx(1.0, abs=1e-3)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    assert load_balance_loss(skewed).item() == pytest.approx(4 * 0.7)
    assert load_balance_loss(uniform).item() == pytest.approx(1.0)


def test_dfpo_keeps_the_chosen_likelihood_from_falling(tiny_model_dir, tiny_tokenizer):
    """Plain DPO widens the margin partly by pushing the chosen answer's likelihood down; DFPO's
    following term holds it. The reference is the tiny model fine-tuned on the chosen answers; each
    rejected answer shares the first half of its chosen answer (an incomplete, then unsafe reply), so
    the two compete for the same tokens. Same start, pairs and steps: only mu differs."""
    from pedray.corpus.generate import preferences
    from pedray.data.tokenize import encode_preferences
    from pedray.model.build import load_model
    from pedray.train.stages import collate_pairs

    records = preferences(0, 8)
    for record in records:
        record["rejected"] = record["chosen"][: len(record["chosen"]) // 2] + "不用去医院，先自己买点抗生素吃就行。"
    columns = encode_preferences(tiny_tokenizer, records, max_len=256, max_prompt_len=96)
    zeros = torch.zeros(len(records)).numpy()
    batch, _ = collate_pairs(dict(columns, ref_chosen_logps=zeros, ref_rejected_logps=zeros), torch.device("cpu"),
                             tiny_tokenizer.pad_token_id)
    ids, labels = batch["input_ids"], batch["labels"]
    torch.manual_seed(0)
    sft = load_model(tiny_model_dir)
    optimizer = torch.optim.AdamW(sft.parameters(), lr=3e-3)
    for _ in range(120):
        loss, _ = causal_lm_loss(sft(input_ids=ids[:8], use_cache=False).logits, labels[:8])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    start = {k: v.clone() for k, v in sft.state_dict().items()}
    with torch.no_grad():
        ref_logps, _ = sequence_logps(sft.eval()(input_ids=ids, use_cache=False).logits, labels)

    def train(mu: float) -> float:
        model = load_model(tiny_model_dir)
        model.load_state_dict(start)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(20):
            logps, lengths = sequence_logps(model(input_ids=ids, use_cache=False).logits, labels)
            loss, _ = dfpo_loss(logps[:8], logps[8:], ref_logps[:8], ref_logps[8:], lengths[:8], beta=0.1, mu=mu)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logps, lengths = sequence_logps(model(input_ids=ids, use_cache=False).logits, labels)
        return ((logps[:8] - ref_logps[:8]) / lengths[:8]).mean().item()  # per-token change of log pi(chosen)

    dpo_change, dfpo_change = train(0.0), train(1.0)
    assert dpo_change < -0.3                 # DPO lets the chosen answer's likelihood fall
    assert dfpo_change > dpo_change / 4      # DFPO keeps it (measured: -1.2 vs -0.02 nats per token)


def test_unlikelihood_golden_value_and_documents_apart():
    """One document, targets [0, 1, 0], V = 3, uniform logits: candidates {}, {0}, {1}, so
    L = -(2 * log(2/3)) / 3; two packed documents [0, 1] and [0] share no candidates: only the second
    position of the first has one (0), L = -log(2/3) / 3."""
    import math

    from pedray.losses import next_token_targets, unlikelihood_loss

    labels = torch.tensor([[-100, 0, 1, 0]])
    keep, targets = next_token_targets(labels)
    logits = torch.zeros(targets.numel(), 3)
    loss, metrics = unlikelihood_loss(logits, targets, keep, torch.tensor([[0, 1, 2, 3]]))
    assert loss.item() == pytest.approx(-2 * math.log(2 / 3) / 3) and metrics["unlikelihood"] == loss
    packed, _ = unlikelihood_loss(logits, targets, keep, torch.tensor([[0, 1, 0, 1]]))
    assert packed.item() == pytest.approx(-math.log(2 / 3) / 3)
    # the gradient lowers the repeated token's logit where it is not the target
    logits.requires_grad_(True)
    unlikelihood_loss(logits, targets, keep, torch.tensor([[0, 1, 2, 3]]))[0].backward()
    assert logits.grad[1, 0] > 0 and logits.grad[2, 1] > 0 and logits.grad[0].abs().sum() == 0


def test_unlikelihood_matches_a_plain_loop_on_random_packed_rows():
    from pedray.losses import next_token_targets, unlikelihood_loss

    torch.manual_seed(0)
    labels = torch.randint(0, 6, (2, 9))
    labels[0, :3] = -100
    labels[1, 4] = -100
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0, 1]])
    keep, targets = next_token_targets(labels)
    logits = torch.randn(targets.numel(), 6)
    ours, _ = unlikelihood_loss(logits, targets, keep, positions)
    probs, total, index = logits.softmax(-1), 0.0, 0
    for b in range(2):
        seen: dict[int, set] = {}
        doc = 0
        for t in range(9):
            doc += int(positions[b, t] == 0)
            if keep[b, t]:
                target = int(targets[index])
                for c in seen.get(doc, set()) - {target}:
                    total -= math.log(1 - probs[index, c].item())
                seen.setdefault(doc, set()).add(target)
                index += 1
    assert ours.item() == pytest.approx(total / targets.numel(), rel=1e-5)


def _dense_unlikelihood(logits, targets, keep, position_ids):
    """The unlikelihood term over all of [N, V] (a softmax, log1p and candidate mask everywhere): the
    form `unlikelihood_loss` replaced, kept here as the reference for its values and gradients."""
    document = (position_ids == 0).cumsum(-1)
    rows = torch.arange(keep.shape[0]).unsqueeze(1).expand_as(keep)[keep]
    docs = document[keep]
    order = torch.arange(targets.numel())
    earlier = (rows[:, None] == rows[None, :]) & (docs[:, None] == docs[None, :]) & (order[None, :] < order[:, None])
    candidates = torch.zeros_like(logits).scatter_add_(
        1, targets.unsqueeze(0).expand(targets.numel(), -1), earlier.float()) > 0
    candidates[order, targets] = False
    probs = torch.softmax(logits, dim=-1)
    return (-torch.log1p(-probs.clamp(max=1 - 1e-6)) * candidates).sum() / targets.numel()


def test_unlikelihood_gathers_the_dense_forms_values_and_gradients():
    """Packed rows with repeats (a small vocabulary's worth of ids in a larger one): the gathered term, on its
    own and shared with the LM loss's log-softmax, gives the dense form's loss and logits gradient."""
    from pedray.losses import next_token_targets, unlikelihood_loss

    torch.manual_seed(1)
    labels = torch.randint(0, 12, (3, 40))
    labels[:, :5] = -100
    labels[1, 20:26] = -100
    positions = torch.cat([torch.arange(22), torch.arange(18)]).expand(3, 40).contiguous()
    keep, targets = next_token_targets(labels)
    base = torch.randn(targets.numel(), 50) * 3

    def grad_of(fn):
        logits = base.clone().requires_grad_(True)
        value = fn(logits)
        value.backward()
        return value.detach(), logits.grad

    dense, dense_grad = grad_of(lambda x: _dense_unlikelihood(x, targets, keep, positions))
    ours, ours_grad = grad_of(lambda x: unlikelihood_loss(x, targets, keep, positions)[0])
    assert dense.item() > 0.05  # the case has candidates
    torch.testing.assert_close(ours, dense)
    torch.testing.assert_close(ours_grad, dense_grad)
    both, both_grad = grad_of(lambda x: labelled_lm_loss(x, targets, 2.0, keep, positions)[0])
    apart, apart_grad = grad_of(lambda x: labelled_lm_loss(x, targets)[0] + 2.0 * _dense_unlikelihood(
        x, targets, keep, positions))
    torch.testing.assert_close(both, apart)
    torch.testing.assert_close(both_grad, apart_grad)
    _, metrics = labelled_lm_loss(base, targets, 2.0, keep, positions)
    torch.testing.assert_close(metrics["loss"], labelled_lm_loss(base, targets)[0])
    torch.testing.assert_close(metrics["unlikelihood"], dense)
