"""The predictor's three parts on a real trained run: encode many sessions, score them as
one batch, decode O(k); and the per-request business rules (include, exclude)."""
import pytest
import torch

from rayrec.serve.predictor import Query, Recommender


@pytest.fixture(scope="module")
def trained(served_run):
    run, sessions = served_run
    long = [e for s in sessions for e in s][:30]     # longer than max_len
    return Recommender(run), sessions[:60] + [long]


def one_at_a_time(rec, events, k):
    """The model on one session, decoded without the batch path."""
    codes, scores = rec.model.recommend(rec.encode(events), k)
    keep = torch.isfinite(scores[0])
    return rec.encoder.decode(codes[0][keep].numpy(), rec.vocab)


def test_a_batch_of_sessions_answers_each_exactly_as_alone(trained):
    rec, sessions = trained
    answers = rec.recommend_many([Query(s, k=5 + i % 7) for i, s in enumerate(sessions)])
    assert len(answers) == len(sessions)
    for i, (s, (items, scores)) in enumerate(zip(sessions, answers)):
        assert items == one_at_a_time(rec, s, 5 + i % 7)
        assert scores == sorted(scores, reverse=True) and len(items) == 5 + i % 7


def test_include_limits_the_candidates_and_exclude_removes_them(trained):
    rec, sessions = trained
    events = sessions[0]
    top, scores = rec.recommend(events, 10)
    allowed = top[4:7] + [10 ** 12]                      # an id the model never saw drops out
    items, inc_scores = rec.recommend(events, 10, include=allowed)
    assert items == top[4:7] and inc_scores == scores[4:7]
    items, _ = rec.recommend(events, 10, exclude=top[:2])
    assert items[:8] == top[2:]
    seen = {e["product_id"] for e in events}
    items, _ = rec.recommend(events, 10, exclude_seen=True, exclude=top[:1], include=top + list(seen))
    assert not (set(items) & seen) and top[0] not in items and set(items) <= set(top)
    # in one batch, each row keeps its own rules
    mixed = rec.recommend_many([Query(events, 10, include=top[4:7]), Query(events, 10), Query(events, 3, exclude=top[:1])])
    assert mixed[0][0] == top[4:7] and mixed[1][0] == top and mixed[2][0] == top[1:4]


@pytest.mark.parametrize("rule, expected", [
    ({"include": [[1]]}, "'include'"),
    ({"exclude": ["not a number"]}, "'exclude'"),
    ({"include": "12"}, "include: expected a list"),
])
def test_a_bad_rule_names_its_field(trained, rule, expected):
    rec, sessions = trained
    with pytest.raises(ValueError, match=expected):
        rec.recommend(sessions[0], 5, **rule)


def test_decode_maps_codes_back_and_specials_to_none(trained):
    rec, _ = trained
    first = rec.model.first_item
    ids = rec.encoder.decode([first, first + 1, 0, first - 1, rec.model.n_items + 5], rec.vocab)
    assert ids[2:] == [None, None, None] and None not in ids[:2]
    assert rec.encoder.encode(ids[:2], rec.vocab, "product_id").tolist() == [first, first + 1]
