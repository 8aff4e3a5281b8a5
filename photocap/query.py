"""Search queries: what people type, read as they mean it, turned into safe FTS5 queries.

The grammar (anything else is taken literally, never an error)::

    word            a caption word; the index stems it ("dogs" finds "A dog runs")
    word*           a prefix ("bik*": bike, bikes, biker)
    "two words"     an exact phrase
    a OR b          either (upper-case OR, as web search engines read it)
    -word, NOT word photos without it ("children -water")

A sentence typed as the query ("A black dog runs along the beach") is read for its content
words: the function words (:data:`FUNCTION_WORDS`: "a", "the", "along") are dropped, and
:meth:`Query.any_of` lets the index rank photos by how much of the query they match, after the
photos that match all of it (:meth:`Query.all_of`). English irregular plurals are one word
("child" finds "children", "men" finds "man"): the stemmer cannot know them.

Every word reaches FTS5 as a quoted string, so no user input can form FTS5 syntax of its own.
This module imports no database and no torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Words that carry no content in a caption or a query: dropped from a query that has content
# words besides (a query of function words alone keeps them).
# fmt: off
FUNCTION_WORDS = frozenset({
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "with", "for", "from", "by",
    "into", "onto", "over", "under", "near", "behind", "through", "while", "as", "is", "are",
    "was", "were", "be", "been", "being", "his", "her", "their", "its", "it", "this", "that",
    "these", "those", "some", "there", "here", "who", "which", "what", "along", "across",
    "around", "up", "down", "out", "off", "about", "against", "between", "beside", "next",
    "has", "have", "had", "does", "do", "did", "very", "just", "photo", "picture", "image",
    "me", "my", "our", "your", "show", "find",
})
# English plurals no stemmer derives (singular, plural): each form finds the other.
IRREGULAR_PLURALS = (
    ("child", "children"), ("man", "men"), ("woman", "women"), ("person", "people"),
    ("foot", "feet"), ("tooth", "teeth"), ("mouse", "mice"), ("goose", "geese"),
    ("ox", "oxen"), ("louse", "lice"), ("fisherman", "fishermen"), ("policeman", "policemen"),
    ("sheep", "sheep"), ("deer", "deer"), ("fish", "fish"),
)
# fmt: on
_FORMS: dict[str, tuple[str, ...]] = {}
for _one, _many in IRREGULAR_PLURALS:
    _FORMS[_one] = _FORMS[_many] = tuple(dict.fromkeys((_one, _many)))

# A phrase (its minus before it: -"black dog"), or anything else up to a space; a quote left
# open is a character like any other.
_TOKEN = re.compile(r'([-\u2013\u2212]?)"([^"]*)"|(\S+)')
_MINUS = ("-", "\u2013", "\u2212")  # hyphen-minus, en dash, minus sign: as people type it
_WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)  # "dog's" one word, "t-shirt" two
# Within a word typed without spaces, what separates words rather than joins them.
_SEPARATORS = re.compile(r"[,;:/\\|()\[\]{}<>!?+&=~^@#$%]+")


@dataclass(frozen=True)
class Term:
    """One thing to find: a word (with its other forms), a prefix, or a phrase."""

    words: tuple[str, ...]  # one word, or a phrase's words, lower-case
    prefix: bool = False  # the last word is a prefix

    def fts(self) -> str:
        """This term in FTS5 syntax: quoted strings only."""
        if len(self.words) > 1:  # a phrase: its words in order
            return '"' + " ".join(self.words) + '"' + ("*" if self.prefix else "")
        word = self.words[0]
        if self.prefix:
            return f'"{word}"*'
        forms = _FORMS.get(word, (word,))
        if len(forms) == 1:
            return f'"{word}"'
        return "(" + " OR ".join(f'"{form}"' for form in forms) + ")"

    @property
    def text(self) -> str:
        return " ".join(self.words) + ("*" if self.prefix else "")


@dataclass(frozen=True)
class Query:
    """A parsed query: groups that must all match (each group: terms of which one must),
    and terms that must not match."""

    groups: tuple[tuple[Term, ...], ...]
    excluded: tuple[Term, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Nothing to find: no words, or only words to leave out."""
        return not self.groups

    def all_of(self) -> str:
        """FTS5: photos matching every group (and none of the excluded terms)."""
        return self._with_exclusions(" AND ".join(_group(g) for g in self.groups))

    def any_of(self) -> str:
        """FTS5: photos matching at least one group: bm25 then ranks them by how much of the
        query they match (a sentence query). Same as :meth:`all_of` for one group."""
        return self._with_exclusions(" OR ".join(_group(g) for g in self.groups))

    def _with_exclusions(self, positive: str) -> str:
        if not positive or not self.excluded:
            return positive
        excluded = " OR ".join(term.fts() for term in self.excluded)
        return f"({positive}) NOT ({excluded})"

    def expanded(self, near: Callable[[str], list[str]]) -> Query:
        """This query with each word's near words (``near(word)``) as alternatives in its
        group (:mod:`photocap.lexicon`); phrases and prefixes stay as typed."""
        groups = []
        for group in self.groups:
            terms = list(group)
            have = {t.words for t in terms}
            for term in group:
                if len(term.words) == 1 and not term.prefix:
                    for word in near(term.words[0]):
                        if (word,) not in have:
                            have.add((word,))
                            terms.append(Term((word,)))
            groups.append(tuple(terms))
        return Query(tuple(groups), self.excluded)

    @property
    def words(self) -> list[str]:
        """The words to find, in order (for a "did you mean" suggestion)."""
        return [word for group in self.groups for term in group for word in term.words]


def _group(terms: tuple[Term, ...]) -> str:
    if len(terms) == 1:
        return terms[0].fts()
    return "(" + " OR ".join(term.fts() for term in terms) + ")"


def parse_query(text: str) -> Query:
    """Read ``text`` as people type queries (see the module docstring); never raises."""
    positive: list[list[Term]] = []
    excluded: list[Term] = []
    joining = False  # the previous token was OR: the next term joins the last group
    negate = False  # the previous token was NOT
    for match in _TOKEN.finditer(text):
        minus_phrase, phrase, bare = match.group(1), match.group(2), match.group(3)
        if bare is not None and not phrase:
            if bare == "OR":  # between two terms; at either end it joins nothing
                joining = bool(positive)
                continue
            if bare in ("AND", "NOT", "NEAR"):
                negate = bare == "NOT"
                continue
        raw = phrase if phrase is not None else bare
        minus = bool(minus_phrase) or (bare is not None and raw.startswith(_MINUS) and len(raw) > 1)
        # "dog,grass" or "man:dog" are two words, as typed with a space; "t-shirt" (and a
        # quoted phrase) is one phrase.
        pieces = [raw] if phrase is not None else [p for p in _SEPARATORS.split(raw) if p]
        for piece in pieces:
            prefix = bare is not None and piece.endswith("*")
            # "dog's" is the word dog: a possessive is not a word of its own.
            words = tuple(re.sub(r"['’]s$", "", w.lower()) for w in _WORD.findall(piece))
            if not words:
                continue
            term = Term(words, prefix=prefix)  # "t-shirt": the phrase of its parts
            if negate or minus:
                excluded.append(term)
            elif joining:
                positive[-1].append(term)
            else:
                positive.append([term])
            joining = negate = False
    groups = [tuple(dict.fromkeys(g)) for g in positive]  # "dog OR dog": one term
    content = [g for g in groups if not _only_function_words(g)]
    if content:
        # In "the OR dog", the function word would match every caption: only dog counts.
        groups = [tuple(t for t in g if not _only_function_words((t,))) for g in content]
    return Query(tuple(dict.fromkeys(groups)), tuple(dict.fromkeys(excluded)))


def _only_function_words(group: tuple[Term, ...]) -> bool:
    return all(len(t.words) == 1 and not t.prefix and t.words[0] in FUNCTION_WORDS for t in group)


# What a query means, for the text-image embedding: its words as typed (function words too:
# the embedding was trained on sentences), without the words to leave out and the operators.
_EXCLUDED = re.compile(r'(?:(?<=\s)|^)[-\u2013\u2212](?:"[^"]*"?|\S+)|\bNOT\s+(?:"[^"]*"?|\S+)')
_OPERATORS = re.compile(r"\b(?:OR|AND)\b|[\"*]")


def meaning_text(text: str) -> str:
    """``text`` as a sentence for the embedding: "dog -cat" -> "dog"; "red car OR bike" ->
    "red car bike"; quotes and prefix stars dropped."""
    return " ".join(_OPERATORS.sub(" ", _EXCLUDED.sub(" ", text)).split())
