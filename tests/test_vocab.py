"""Vocabulary: tokenisation, building from train captions, ids <-> words, the sentence form."""

from __future__ import annotations

import pytest

from photocap.vocab import END, PAD, SPECIALS, START, UNK, Vocab, to_sentence, tokenize


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("A dog's ball, red.") == ["a", "dog's", "ball", "red"]
    assert tokenize("  Two DOGS play;  with 3 balls!! ") == [
        "two",
        "dogs",
        "play",
        "with",
        "3",
        "balls",
    ]
    assert tokenize("A man - in a hat .") == ["a", "man", "in", "a", "hat"]
    assert tokenize("") == []
    assert tokenize("...,;") == []


def test_build_keeps_words_seen_min_count_times_most_frequent_first() -> None:
    captions = ["A dog runs.", "A dog sits.", "A cat sits.", "The dog"]
    vocab = Vocab.build(captions, min_count=2)
    assert vocab.words[:4] == SPECIALS
    # a: 3, dog: 3, sits: 2 -> ties alphabetical; cat/runs/the seen once -> dropped
    assert vocab.words[4:] == ("a", "dog", "sits")
    assert len(vocab) == 7
    assert Vocab.build(captions, min_count=1).words[4:] == (
        "a",
        "dog",
        "sits",
        "cat",
        "runs",
        "the",
    )
    assert Vocab.build(captions, min_count=4).words == SPECIALS


def test_build_from_a_generator_consumes_it_once() -> None:
    vocab = Vocab.build((c for c in ["red ball", "red hat"]), min_count=2)
    assert vocab.words[4:] == ("red",)


def test_vocab_must_start_with_the_specials() -> None:
    with pytest.raises(ValueError):
        Vocab(("a", "b"))
    with pytest.raises(ValueError):
        Vocab((START, PAD, END, UNK, "a"))


def test_encode_decode_round_trip_and_unknown_words() -> None:
    vocab = Vocab.build(["a dog runs on the grass"], min_count=1)
    ids = vocab.encode("A dog runs on the grass.")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert len(ids) == 8
    assert vocab.decode(ids) == ["a", "dog", "runs", "on", "the", "grass"]
    unk = vocab.encode("A zebra runs")
    assert unk[2] == vocab.unk_id
    assert vocab.decode(unk) == ["a", "runs"]  # <unk> never reaches the user
    assert vocab.encode("a dog runs on the grass", max_words=2) == [
        vocab.start_id,
        vocab.id("a"),
        vocab.id("dog"),
        vocab.end_id,
    ]
    assert vocab.id("zebra") == vocab.unk_id


def test_decode_stops_at_end_and_skips_specials() -> None:
    vocab = Vocab.build(["a dog runs"], min_count=1)
    a, dog, runs = vocab.id("a"), vocab.id("dog"), vocab.id("runs")
    ids = [vocab.start_id, a, vocab.pad_id, dog, vocab.unk_id, vocab.end_id, runs]
    words = vocab.decode(ids)
    assert words == ["a", "dog"]
    assert not set(words) & set(SPECIALS)


def test_to_sentence() -> None:
    assert to_sentence(["a", "dog", "runs"]) == "A dog runs."
    assert to_sentence(["dog"]) == "Dog."
    assert to_sentence([]) == ""
    assert to_sentence(["a", "dog", "'s", "ball"]) == "A dog's ball."
    assert to_sentence(["3", "dogs"]) == "3 dogs."


def test_round_trip_through_sentence_and_tokenize() -> None:
    vocab = Vocab.build(["a dog's ball is red", "two men"], min_count=1)
    for text in ["A dog's ball is red.", "Two men."]:
        sentence = to_sentence(vocab.decode(vocab.encode(text)))
        assert sentence == text
        assert tokenize(sentence) == tokenize(text)
