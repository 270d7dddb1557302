"""toytasks' head scores against TransformerLens' head detector, copied from the seed
(Head_Detector_Demo): the detection patterns and `compute_head_attention_similarity_score` as
written (the patterns' docstrings left out); only `detect_head`'s loop over heads and sequences
is ours (the detector runs a model on text).

The toytasks convention (`heads/<kind>/...`) averages over the rows that have a target; the
detector's (`heads/detector/<kind>/...`) divides by all rows. Both are checked here."""
import numpy as np
import pytest
import torch

from toytasks.measures.heads import head_scores


# --- the seed's detector code, verbatim -------------------------------------------------------
def is_square(x: torch.Tensor) -> bool:
    """Checks if `x` is a square matrix."""
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def get_previous_token_head_detection_pattern(
    tokens: torch.Tensor,  # [batch (1) x pos]
) -> torch.Tensor:
    detection_pattern = torch.zeros(tokens.shape[-1], tokens.shape[-1])
    # Adds a diagonal of 1's below the main diagonal.
    detection_pattern[1:, :-1] = torch.eye(tokens.shape[-1] - 1)
    return torch.tril(detection_pattern)


def get_duplicate_token_head_detection_pattern(
    tokens: torch.Tensor,  # [batch (1) x pos]
) -> torch.Tensor:
    # [pos x pos]
    token_pattern = tokens.repeat(tokens.shape[-1], 1).numpy()

    # If token_pattern[i][j] matches its transpose, then token j and token i are duplicates.
    eq_mask = np.equal(token_pattern, token_pattern.T).astype(int)

    np.fill_diagonal(
        eq_mask, 0
    )  # Current token is always a duplicate of itself. Ignore that.
    detection_pattern = eq_mask.astype(int)
    return torch.tril(torch.as_tensor(detection_pattern).float())


def get_induction_head_detection_pattern(
    tokens: torch.Tensor,  # [batch (1) x pos]
) -> torch.Tensor:
    duplicate_pattern = get_duplicate_token_head_detection_pattern(tokens)

    # Shift all items one to the right
    shifted_tensor = torch.roll(duplicate_pattern, shifts=1, dims=1)

    # Replace first column with 0's
    # we don't care about bos but shifting to the right moves the last column to the first,
    # and the last column might contain non-zero values.
    zeros_column = torch.zeros(duplicate_pattern.shape[0], 1)
    result_tensor = torch.cat((zeros_column, shifted_tensor[:, 1:]), dim=1)
    return torch.tril(result_tensor)


def compute_head_attention_similarity_score(
    attention_pattern: torch.Tensor,  # [q_pos k_pos]
    detection_pattern: torch.Tensor,  # [seq_len seq_len] (seq_len == q_pos == k_pos)
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure,
) -> float:
    assert is_square(
        attention_pattern
    ), f"Attention pattern is not square; got shape {attention_pattern.shape}"

    # mul

    if error_measure == "mul":
        if exclude_bos:
            attention_pattern[:, 0] = 0
        if exclude_current_token:
            attention_pattern.fill_diagonal_(0)
        score = attention_pattern * detection_pattern
        return (score.sum() / attention_pattern.sum()).item()

    # abs

    abs_diff = (attention_pattern - detection_pattern).abs()
    assert (abs_diff - torch.tril(abs_diff).to(abs_diff.device)).sum() == 0

    size = len(abs_diff)
    if exclude_bos:
        abs_diff[:, 0] = 0
    if exclude_current_token:
        abs_diff.fill_diagonal_(0)

    return 1 - round((abs_diff.mean() * size).item(), 3)


# --- detect_head's defaults, over heads and a list of sequences ---------------------------------
DETECTION_PATTERNS = {"prev_token": get_previous_token_head_detection_pattern,
                      "duplicate_token": get_duplicate_token_head_detection_pattern,
                      "induction": get_induction_head_detection_pattern}


def detect_heads(pattern: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """pattern [batch, head, query, key] -> [head]: detect_head(..., error_measure="mul") on each
    sequence (a list of sequences gives the mean of their scores)."""
    scores = [[compute_head_attention_similarity_score(
        pattern[b, h].clone(), DETECTION_PATTERNS[kind](tokens[b:b + 1]),
        exclude_bos=False, exclude_current_token=False, error_measure="mul")
        for h in range(pattern.shape[1])] for b in range(pattern.shape[0])]
    return torch.tensor(scores).mean(0)


# --- known answers -------------------------------------------------------------------------------
TOKENS = torch.tensor([[0, 11, 12, 13, 14, 15, 11, 12, 13, 14, 15]])  # BOS, 5 tokens, the 5 again
N, HALF = 11, 5


def one_hot_pattern(rule) -> torch.Tensor:
    """Each query attends to one key, `rule(query)`: [1, 1, query, key]."""
    pattern = torch.zeros(1, 1, N, N)
    for q in range(N):
        pattern[0, 0, q, rule(q)] = 1.0
    return pattern


@pytest.mark.parametrize("rule, kind, ours, detector", [
    # previous token: all 10 rows after BOS have a target; the detector counts BOS's row too
    (lambda q: max(q - 1, 0), "prev_token", 1.0, 10 / 11),
    # induction: the 5 rows of the second copy have a target (the token after the first occurrence)
    (lambda q: q - HALF + 1 if q > HALF else 0, "induction", 1.0, 5 / 11),
    (lambda q: q - HALF if q > HALF else 0, "duplicate_token", 1.0, 5 / 11),
    # all on BOS: only row 1's previous token is BOS
    (lambda q: 0, "prev_token", 1 / 10, 1 / 11),
    # half on the target, half on BOS, in the second copy
    (None, "induction", 0.5, 2.5 / 11),
])
def test_known_answers_in_both_conventions(rule, kind, ours, detector):
    if rule is None:
        pattern = 0.5 * one_hot_pattern(lambda q: q - HALF + 1 if q > HALF else 0) + 0.5 * one_hot_pattern(lambda q: 0)
    else:
        pattern = one_hot_pattern(rule)
    scores = head_scores(pattern, TOKENS)
    assert scores[kind].item() == pytest.approx(ours)
    assert scores[f"detector/{kind}"].item() == pytest.approx(detector)
    assert detect_heads(pattern, TOKENS, kind).item() == pytest.approx(detector)


def test_detector_variant_is_the_detector_on_random_patterns():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 6, (8, 12), generator=generator)  # a small vocabulary: many repeats
    tokens[:, 0] = 0
    scores = torch.randn(8, 3, 12, 12, generator=generator)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # [batch, head, query, key]
    ours = head_scores(pattern, tokens)
    for kind in DETECTION_PATTERNS:
        torch.testing.assert_close(ours[f"detector/{kind}"], detect_heads(pattern, tokens, kind))
        # the two conventions differ by the share of rows with a target, sequence by sequence
        assert not torch.allclose(ours[kind], ours[f"detector/{kind}"])
