import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safealign.data.records import PairDataset, PreferencePair
from safealign.data.splits import split_pairs
from safealign.errors import ConfigError, IsolationError

FRACTIONS = {"eval_fraction": 0.1, "candidate_fraction": 0.3, "safety_fraction": 0.2}


def _dataset(prompt_ids, name="d"):
    pairs = tuple(PreferencePair(f"prompt {p}", f"a{i}", f"b{i}") for i, p in enumerate(prompt_ids))
    return PairDataset(pairs, name=name)


def _prompt_sets(splits):
    return {
        "train": set(splits.train.prompts),
        "eval": set(splits.eval.prompts),
        "candidate": set(splits.candidate.prompts),
        "safety": {p.prompt for p in splits.safety.unseal(purpose="certify")},
    }


@settings(max_examples=40, deadline=None)
@given(
    prompt_ids=st.lists(st.integers(0, 60), min_size=12, max_size=120),
    seed=st.integers(0, 2**31),
    permutation_seed=st.randoms(use_true_random=False),
)
def test_splits_disjoint_complete_and_stable_under_reordering(prompt_ids, seed, permutation_seed):
    data = _dataset(prompt_ids)
    if len(data.prompts) < 8:
        return
    splits = split_pairs(data, seed=seed, **FRACTIONS)
    sets = _prompt_sets(splits)
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], (a, b)
    assert set().union(*sets.values()) == set(data.prompts)
    assert sum(len(s) for s in (splits.train, splits.eval, splits.candidate, splits.safety)) == len(
        data
    )

    shuffled = list(data.pairs)
    permutation_seed.shuffle(shuffled)
    again = split_pairs(PairDataset(tuple(shuffled), name="d"), seed=seed, **FRACTIONS)
    assert again.fingerprints() == splits.fingerprints()


def test_deterministic_and_seed_dependent():
    data = _dataset(range(200))
    a = split_pairs(data, seed=1, **FRACTIONS)
    assert split_pairs(data, seed=1, **FRACTIONS).fingerprints() == a.fingerprints()
    assert (
        split_pairs(data, seed=2, **FRACTIONS).fingerprints()["safety"]
        != a.fingerprints()["safety"]
    )
    assert a.sizes()["safety"]["prompts"] == 40 and a.sizes()["candidate"]["prompts"] == 60


def test_fingerprint_covers_every_field():
    pair = PreferencePair("p", "a", "b")
    assert (
        PairDataset((pair,)).fingerprint
        != PairDataset((PreferencePair("p", "a", "b", group="g"),)).fingerprint
    )


def test_safety_split_is_sealed():
    splits = split_pairs(_dataset(range(50)), seed=0, **FRACTIONS)
    assert len(splits.safety) == 10 and splits.safety.num_prompts == 10
    with pytest.raises(IsolationError, match="sealed"):
        list(splits.safety)
    with pytest.raises(IsolationError):
        splits.safety[0]
    with pytest.raises(IsolationError, match="not by 'optimize_policy'"):
        splits.safety.unseal(purpose="optimize_policy")
    assert len(splits.safety.unseal(purpose="certify")) == 10


def test_overlapping_names_the_callers_safety_prompts_without_unsealing():
    splits = split_pairs(_dataset(range(50)), seed=0, **FRACTIONS)
    safety = splits.safety.unseal(purpose="certify").prompts
    mine = [splits.candidate.prompts[0], safety[3], "a prompt in no split", safety[0]]
    assert splits.safety.overlapping(mine) == (1, 3)
    assert splits.safety.overlapping(splits.candidate.prompts) == ()
    assert splits.safety.overlapping(iter(safety)) == tuple(range(len(safety)))


def test_too_few_prompts_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot fill"):
        split_pairs(_dataset(range(3)), seed=0, **FRACTIONS)
