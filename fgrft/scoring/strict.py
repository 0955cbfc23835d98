"""The strict scorer (project default): score only what the model committed to.

Which text is read
    The part after the last "## Final Response" (or "## Final Answer") heading
    when the output has one, else the whole output. When a final-response
    section exists but commits to nothing, the item is unparsed: the thinking
    section is deliberation over every option, and reading an answer out of it
    would credit the model with a choice it did not make in its answer.

A response's answer is its LAST explicit commitment. Commitments:
    * answer statements: a cue ("the answer is", "Answer:", "the correct/best
      option is", "the correct answer for this question is", "final answer -",
      "I would choose") followed by a letter ("B", "(B)", "**B**", "option B",
      "$\\boxed{B}$", "B. <B's text>") or by an option's text; a
      yes/no/maybe-style option as the section's first word ("Yes, ...");
    * "B is the correct answer", "(B) is the best option", "option C is the
      option that ..."; a bare "B is correct" counts only when nothing stronger
      commits (beside "the answer is A" it judges statement B true);
    * a letter label as the complement of "is": "the medium of choice is B.
      Mitis salivarius agar", "is: **D. Xylene**", 'is B: "<text>"';
    * answer lines: a line holding only a letter ("B", "**B.**", "(B)") or a
      letter and its option's text (also reworded: "A. Polypropylene" for "Poly
      propylene"), and the section's first line when it opens with "B. <B's
      text>" and goes on in a sentence;
    * an option's text stated as the answer: "<text> (abbr.) is the correct
      answer", "<text> would be the most relevant among the given options".

Not commitments (mentions):
    * letters used as references while discussing options: "Round burr (A) is
      ...", "option B is less suitable", list lines that gloss an option ("A.
      Gloves - removed last", "B. Elgiloy: a cobalt alloy");
    * the option list echoed, or a walk through the options: answer lines next
      to each other, or three or more in letter order;
    * questions ("A is the correct answer?") and denied answers: "the wrong
      answer is A", "the answer is not A" (unless it goes on "but B"), "Answer:
      B is wrong", "option A is the least likely", "A is likely a distractor".

A later retraction ("the answer is not B", "B is incorrect") cancels an earlier
commitment to B (rule "retracted"). A letter paired with another option's exact
text ("A. <text of option C>") is a conflict (rule "conflict"). Two answers of
equal standing in one commitment ("A or B", "B/C") are ambiguous.

Only when nothing commits
    1. "... is <option text>." : an option's text completing a sentence after
       "is/are/would be" ("The most likely diagnosis is cerebral malaria."), the
       last such sentence;
    2. labelled options: one distinct non-negated labelled letter ("**D.** fits
       best", "(Option B)"); two or more -> unparsed;
    3. exactly one option's text named (not negated, not inside a longer
       option's text), in a response that names no option by its letter.

Rules that keep it honest
    * Letters are upper case and valid for the item (the first len(options)
      letters); a bare capital inside prose ("Type A personality", "vitamin
      A") is never read as an option: a letter needs a cue or a label.
    * A letter, a full stop and a lower-case word ("C. difficile", "H.
      pylori") is a genus abbreviation, not a lettered answer, unless the
      words are that option's own text.
    * "A" followed by a lower-case word or a number after a cue ("Answer: A
      patient with...", "Answer: A 45-year-old") is the article, not option A
      (unless the word is a continuation such as "because" or "since").
    * Short or generic option texts ("yes", "no", "maybe", "none", numbers,
      one- or two-character texts) are recognised only after an answer cue, as
      the section's first word or in bold; elsewhere they are ordinary words.
    * No similarity guessing: a paraphrase of an option ("the dose is 60 mg"
      for "60 mg doxycycline") is unparsed (``letter`` None) and counts as
      wrong; empty outputs count too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Iterable, Mapping

from fgrft.records import LETTERS
from fgrft.scoring.extraction import Extraction, is_empty_output

NAME = "strict"

# Option texts too generic to be recognised by their text alone.
GENERIC_OPTION_TEXTS = frozenset(
    {"yes", "no", "maybe", "none", "all", "both", "neither", "true", "false"})

# Words that may follow "answer is A" when A is the option, not the article.
_A_CONTINUATIONS = frozenset(
    "because since as which and or but for given due that so then therefore "
    "here in is was with considering based while whereas".split())

_FINAL_HEADING = re.compile(
    r"^[ \t]*#{1,6}[ \t]*final[ \t]+(?:response|answer)\b[ \t]*:?", re.I | re.M)

_ANSWER_CUE = re.compile(
    r"(?:"
    r"\b(?:final|correct|right|best|true|most\s+(?:likely|appropriate|accurate|probable|correct))"
    r"\s+(?:answer|option|choice)(?:\s+(?:choice|option))?"
    r"|\banswer(?:\s+(?:choice|option))?"
    r")"
    r"(?:\s+(?:to\s+(?:this|the)\s+question|here|then)"
    # "the correct answer for this multiple-choice question is", "the best
    # answer among the given options is": a short clause, no sentence end.
    r"|\s+(?:to|for|among|in|of|from)\s[^.!?:;\n]{0,60}?(?=\s(?:is|would|will|should|must)\b))?"
    r"[\s*_]*"
    r"(?:(?P<neg>is\s+not\b|isn['’]t\b|is\s+never\b|would\s+not\s+be\b|wouldn['’]t\s+be\b"
    r"|cannot\s+be\b|can['’]t\s+be\b)"
    r"|is\b|would\s+be\b|will\s+be\b|should\s+be\b|must\s+be\b|appears\s+to\s+be\b"
    r"|seems\s+to\s+be\b|remains\b|=|:|-|–|—)"
    r"(?:[\s,]*(?:therefore|thus|hence|clearly|likely|probably|most\s+likely|definitely"
    r"|indeed|then|so)\b)?"
    r"[\s,*_:]*"
    r"|\bI(?:['’]d|\s+would|\s+will)?\s+(?:choose|select|pick|go\s+with|opt\s+for)\s+",
    re.I)

# After a negated statement: "the answer is not A but (rather) B".
_BUT = re.compile(r"[\s,;*_]*(?:but|rather)\s+(?:(?:rather|instead)\s+)?", re.I)
# Joins two answers into one statement: "A or B", "B/C", "yes and no".
_CONJUNCTION = (r"(?:,|/|&|(?i:\band/or\b|\bor\b|\band\b))")
_ALT_TEXT_PREFIX = re.compile(
    r"[\s*_\"'”’)\]]*[\s*_.]*" + _CONJUNCTION + r"[\s*_\"'“‘]*(?:(?:either|both|a|an|the)\s+)?",
    re.I)
# What may stand between a cue or a label and the option text it introduces.
_GAP_BEFORE_TEXT = re.compile(r"[\s*_\"'“‘`(\[]*")
_GAP_BEFORE_LEADING = re.compile(r"[\s*_#>\"'“‘`]*")
_LEADING_END = re.compile(r"[*_\"'”’]*[ \t]*(?:[,.!:;\-–—\n]|$)")
_BOLD_OPEN = re.compile(r"\*\*[ \t]*$")
_BOLD_CLOSE = re.compile(r"[ \t]*[.!]?[ \t]*\*\*")
_NEXT_TOKEN = re.compile(r"[ \t]+([a-z]+|\d)")
# A capital, a full stop and a lower-case word: "C. difficile", "H. pylori".
_GENUS = re.compile(r"\.[ \t]*[a-z]")
_GAP_AFTER_LABEL = re.compile(r"[. \t]*")
_LABEL_SEP = re.compile(r"[ \t*_]*[.):][ \t*_]*(?=[^\W_])")
# What must precede a letter for "B is correct" to be a statement: a line
# start, the end of a sentence, "(", "**", "option(s)" or "so/thus/therefore",
# so that "type A is the most common" inside a sentence stays prose.
_LETTER_OPENER = re.compile(
    r"(?:^[ \t>*_#\-•]*|[.!?:;][ \t]+|\(|\*\*|(?<![^\W_])(?:options?|choices?)[ \t]+"
    r"|(?<![^\W_])(?:so|thus|therefore|hence),?[ \t]+)[(\[]?$",
    re.I | re.M)

_COMMA = re.compile(r",[ \t]+$")
_NEGATION_AFTER = re.compile(
    r"[\s.:)\]*_\-–—,]*(?:\([^)\n]{0,80}\)[\s,*_]*)?"
    r"(?:(?:is|are|was|were|would|seems?|appears?|remains?|can|could|may|might|should|must)\s+)?"
    r"(?:(?:be|also|probably|likely|definitely|clearly|therefore|thus)\s+)*"
    r"(?:not\b|never\b|isn['’]t|aren['’]t|wasn['’]t|wouldn['’]t|doesn['’]t|does\s+not|do\s+not"
    r"|cannot|can['’]t|incorrect|wrong|unlikely|less\s+likely|less\s+appropriate|less\s+suitable"
    r"|(?:the\s+)?least\s+(?:likely|appropriate|suitable|common)|(?:an?\s+)?distractor"
    r"|ruled\s+out|excluded|inappropriate|contraindicated|eliminated|false\b|a\s+distractor)",
    re.I)
_NEGATION_BEFORE = re.compile(
    r"(?:\bnot|n['’]t|\bnever|\brul(?:e|ed|ing)\s+out|\bexclud\w*|\beliminat\w*|\brather\s+than"
    r"|\binstead\s+of|\bunlike|\bexcept|\bother\s+than|\bversus|\bvs\.?|\bagainst"
    r"|\bincorrect(?:ly)?|\bwrong)"
    r"[\s:,*_\"'“‘]*(?:(?:the|an?)\s+)?(?:(?:options?|choices?)\s*)?[(\[*_\s]*$",
    re.I)
_NEGATION_WINDOW = 48

# Said of an option, these deny it is the answer: "Answer: B is wrong", "A is
# not the correct answer", "option A is likely a distractor", "the least likely".
_STATUS_NEGATION = re.compile(
    r"[ \t*_)\]\"'”’]*(?:\([^)\n]{0,80}\)[ \t*_]*)?"
    r"(?:(?:is|was|would\s+be|seems\s+to\s+be|appears\s+to\s+be|seems|appears)[ \t]+)?"
    r"(?:(?:also|probably|likely|definitely|clearly|therefore|thus|then)[ \t]+)*"
    r"(?:incorrect|wrong|false\b|unlikely|less\s+likely|(?:the\s+)?least\s+likely"
    r"|(?:an?\s+)?(?:distractor|red\s+herring)|ruled\s+out|excluded|eliminated"
    r"|not\s+(?:the\s+)?(?:correct|right|best|true|answer|likely|most)\b)",
    re.I)
# Right before an answer cue, these make it name a wrong answer: "the wrong
# answer is A", "not the correct option: B".
_CUE_DENIED = re.compile(
    r"(?:\b(?:wrong|incorrect|false|worst|least\s+likely|unlikely|not|never)|n['’]t)"
    r"(?:\s+(?:the|an?|my))?[\s*_]*$", re.I)
# "B is correct" says less than "B is the correct answer".
_ANSWER_NOUN = re.compile(r"[ \t*_]+(?:answer|option|choice)\b", re.I)
# A question mark before the sentence ends: "A is the correct answer?".
_QUESTION = re.compile(r"[^\n.!?]{0,40}\?")
# What may follow an option's text for it to stand as a whole answer.
_TEXT_END = re.compile(r"[ \t*_\"'”’]*(?:\([^)\n]{0,80}\)[ \t*_]*)?(?:[.,;:!?\n]|$)")
# "<option text> is the correct answer", "... would be the most relevant among
# the given options". Starts right after the option text's last word.
_TEXT_THEN_VERDICT = re.compile(
    r"(?<![^\W_])(?:is|would\s+be|seems\s+to\s+be|appears\s+to\s+be|remains)\s+(?:"
    r"(?:the\s+)?(?:correct|right|best|most\s+(?:likely|appropriate|accurate|relevant|suitable|probable|correct))"
    r"(?:\s+(?:answer|option|choice)\b"
    r"|[^.!?\n]{0,40}?\bamong\s+(?:the\s+|these\s+)?(?:given\s+|listed\s+|provided\s+)?(?:options|choices)\b)"
    # "... is the option that is not a likely differential": the answer to an EXCEPT question
    r"|the\s+(?:option|answer|choice)\s+(?:that|which)\b)",
    re.I)
# What may stand between an option's text and that verb: "(NLPHL)", markup.
_BEFORE_VERDICT = re.compile(r"[^\W_][*_\"'”’]*[ \t]*(?:\([^)\n]{0,80}\)[ \t]*)?[*_]*[ \t]*$")
# "The most likely diagnosis is cerebral malaria.": an option's text as the
# complement of "is", ending its sentence.
_COPULA_BEFORE = re.compile(
    r"(?<![^\W_])(?:is|are|was|would\s+be|will\s+be|should\s+be|remains)"
    r"(?P<neg>\s+(?:not|never)\b)?[\s*_\"'“‘]+(?:(?:either|both|the|an?)\s+)?$", re.I)
_SENTENCE_END = re.compile(
    r"[ \t*_\"'”’]*(?:\([^)\n]{0,80}\)[ \t*_]*)?"
    r"(?:[.;!\n]|$|,[ \t]+(?:which|as|because|since|due|given|that|and\s+(?:this|it))\b)", re.I)
# "is B. Mitis salivarius agar", "is: **D. Xylene**".
_COPULA_BEFORE_LABEL = re.compile(
    r"(?<![^\W_])(?:is|would\s+be|will\s+be|should\s+be)[ \t]*:?[\s*_]*[(\[]?$", re.I)
# Markup and end punctuation around the text of a label line.
_LINE_MARKUP = re.compile(r"^[\s*_\"'“‘`]+|[\s*_\"'”’`.!,;:]+$")
# A label line that glosses its option ("A. Gloves - removed last", "B. Elgiloy:
# a cobalt alloy") is a discussion line, not an answer.
_GLOSS = re.compile(r"[ \t*_\"'”’]*(?::|[ \t]+[-–—][ \t]+|[ \t]*[-–—]{1,2}[ \t]+)")

_AMBIGUOUS = "?"  # marker for "this piece of evidence names several options"
_CONFLICT = "!"   # marker for "a letter paired with another option's text"


@dataclass(frozen=True)
class _LetterPatterns:
    """Regexes that depend only on the item's letters (cached per option count)."""

    letter_statement: re.Pattern[str]
    letter_is_correct: re.Pattern[str]
    letter_is_wrong: re.Pattern[str]
    copula_label: re.Pattern[str]
    line_label: re.Pattern[str]
    letter_alternative: re.Pattern[str]
    option_mentions: re.Pattern[str]
    labels: tuple[re.Pattern[str], ...]
    label_then_text: re.Pattern[str]


@dataclass(frozen=True)
class _Item:
    """What the scorer needs to know about one item's options."""

    letters: str
    option_words: dict[str, tuple[str, ...]]  # letter -> its text as lower-case words
    generic: tuple[str, ...]                   # letters whose text is too generic, in order
    rx: _LetterPatterns
    by_norm: dict[str, str]                    # an option's text, letters and digits only -> letter

    lookahead_words: int                       # words to read after a cue: the longest
                                               # option, "either", an article
    max_text_chars: int                        # the longest option text, in characters


_WORD = re.compile(r"[^\W_]+")
# At most this many non-word characters between two words of an option text,
# so "TRUS-guided", "TRUS guided" and "trus  guided" all match "TRUS guided".
_MAX_GAP = 4


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _is_generic(words: tuple[str, ...]) -> bool:
    joined = "".join(words)
    return (" ".join(words) in GENERIC_OPTION_TEXTS or len(joined) <= 2
            or not any(ch.isalpha() for ch in joined))


@lru_cache(maxsize=None)
def _letter_patterns(letters: str) -> _LetterPatterns:
    cls = f"[{letters}]"
    option_word = r"(?i:options?|choices?)"
    one_letter = rf"[(\[]?[ \t*_]*(?P<letter>{cls})(?![^\W_])"
    # "C. difficile", "E. coli", "H. pylori": a capital, a full stop and a
    # lower-case word is a genus abbreviation, not a lettered answer.
    not_genus = r"(?!\.[ \t]*[a-z])"
    # LaTeX answers, as Llama-3.1 writes them: "The final answer is: $\boxed{B}$".
    boxed = r"(?:\$*\\boxed\{[ \t]*(?:\\text(?:bf)?\{[ \t]*)?)?"
    return _LetterPatterns(
        letter_statement=re.compile(
            rf"[\s*_\"'“‘`]*{boxed}(?:(?i:either|both)\s+)?(?:[(\[]?{option_word}[ \t]*)?"
            rf"[ \t*_]*{one_letter}"),
        # "B is correct", "(B) is the best answer", "so option C is most likely".
        # The pattern starts at the letter (fast to scan for); what must come
        # before it is checked separately with _LETTER_OPENER.
        letter_is_correct=re.compile(
            rf"(?P<letter>{cls})(?![^\W_])[ \t]*[.)\]]?[ \t]*(?:\*\*)?[ \t]*"
            r"(?:\([^)\n]{0,80}\)[ \t]*)?"
            r"(?i:is|would\s+be|seems\s+to\s+be|appears\s+to\s+be)[ \t]+(?i:(?:the|an?)[ \t]+)?"
            r"(?i:(?:most[ \t]+)?(?:correct|right|best|likely|appropriate|accurate)\b)"
            r"(?![ \t]+(?i:not|wrong|incorrect|to|a[ \t]+distractor|distractor|false)\b)"),
        letter_is_wrong=re.compile(
            rf"(?P<letter>{cls})(?![^\W_])[ \t]*[.)\]]?[ \t]*(?:\*\*)?[ \t]*"
            r"(?:\([^)\n]{0,80}\)[ \t]*)?"
            r"(?i:is|would\s+be|seems\s+to\s+be|appears\s+to\s+be)[ \t]+"
            r"(?i:(?:(?:also|probably|likely|definitely|clearly)[ \t]+)*"
            r"(?:incorrect|wrong|false\b|(?:the[ \t]+)?least[ \t]+likely|(?:an?[ \t]+)?distractor"
            r"|not[ \t]+(?:the[ \t]+)?(?:correct|right|best)[ \t]+(?:answer|option|choice)\b))"),
        # "is B. Mitis salivarius agar", "is: **D. Xylene**". Starts at the
        # letter (fast to scan for); _COPULA_BEFORE_LABEL checks what precedes.
        copula_label=re.compile(
            rf"(?P<letter>{cls})(?![^\W_])[ \t]*[.):\]][ \t]*(?:\*\*[ \t]*)?[\"'“‘]?(?=[^\W_])"),
        line_label=re.compile(
            rf"^[ \t>#*_\-•]*[(\[]?[ \t*_]*(?P<letter>{cls})(?![^\W_])[ \t*_]*(?P<sep>[.):\]]?)"
            r"[ \t*_]*(?P<rest>[^\n]*)$", re.M),
        letter_alternative=re.compile(
            rf"[\s*_]*[)\]]?[\s*_.]*{_CONJUNCTION}[\s*_]*(?:{option_word}[ \t]*)?[(\[]?[ \t*_]*"
            rf"(?P<letter>{cls})(?![^\W_])"
            r"(?![ \t]+(?i:is|was|would|seems|can|could|may|might|has)\b)"),
        option_mentions=re.compile(
            rf"(?<![^\W_]){option_word}[ \t:#]*{one_letter}"
            rf"(?P<more>(?:[ \t)\]]*(?:,[ \t]*(?i:(?:and|or)\b)?|{_CONJUNCTION})[ \t(\[]*"
            rf"(?:{option_word}[ \t]*)?{cls}(?![^\W_]))*)"),
        labels=(
            re.compile(rf"\([ \t]*(?P<letter>{cls})[ \t]*\)"),
            re.compile(rf"\\boxed\{{[ \t]*(?:\\text(?:bf)?\{{[ \t]*)?(?P<letter>{cls})[ \t]*\}}"),
            re.compile(rf"\*\*[ \t]*[(\[]?[ \t]*(?P<letter>{cls})[ \t]*[.):]?[ \t]*\*\*"),
            re.compile(rf"^[ \t>*_#\-•]*[(\[]?(?P<letter>{cls}){not_genus}[ \t]*[.):\]](?![^\W_])",
                       re.M),
            re.compile(rf"^[ \t>*_#\-•(\[]*(?P<letter>{cls})[ \t*_.)\]]*$", re.M),
        ),
        # Starts at the letter (fast to scan for); the lookbehind after it
        # checks that the letter is not the end of a word.
        label_then_text=re.compile(
            rf"(?P<letter>{cls})(?<![^\W_]{cls})[ \t]*[)\].:\-–][ \t]*(?:\*\*[ \t]*)?"),
    )


@lru_cache(maxsize=8192)
def _compile(options: tuple[tuple[str, str], ...]) -> _Item:
    option_map = dict(options)
    letters = LETTERS[: len(option_map)]
    words = {k: tuple(_words(option_map.get(k, ""))) for k in letters}
    words = {k: w for k, w in words.items() if w}  # a text with no words can't be matched
    by_norm: dict[str, str] = {}
    for k, w in words.items():
        by_norm.setdefault("".join(w), k)
    return _Item(letters, words, tuple(k for k, w in words.items() if _is_generic(w)),
                 _letter_patterns(letters), by_norm,
                 max((len(w) for w in words.values()), default=0) + 2,
                 max((len(v) for v in option_map.values()), default=0))


def _item(options: Mapping[str, str]) -> _Item:
    return _compile(tuple((k, options[k]) for k in sorted(options)))


class _Words:
    """Words (lower-cased) with their character spans: option texts are matched
    word by word, so case, punctuation, hyphens and spacing do not matter."""

    def __init__(self, text: str, matches: Iterable[re.Match[str]]):
        self.text = text
        self.words: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        for m in matches:
            self.words.append(m.group().lower())
            self.starts.append(m.start())
            self.ends.append(m.end())

    def match_at(self, i: int, option: tuple[str, ...]) -> int | None:
        """End offset of ``option``'s words starting at word i, or None."""
        if i + len(option) > len(self.words):
            return None
        for j, word in enumerate(option):
            if self.words[i + j] != word:
                return None
            if j and self.starts[i + j] - self.ends[i + j - 1] > _MAX_GAP:
                return None
        return self.ends[i + len(option) - 1]


def _words_after(text: str, pos: int, allowed_gap: re.Pattern[str], limit: int) -> _Words | None:
    """The next ``limit`` words from pos, if only ``allowed_gap`` lies before the first."""
    first = _WORD.search(text, pos)
    if first is None or not allowed_gap.fullmatch(text, pos, first.start()):
        return None
    return _Words(text, islice(_WORD.finditer(text, first.start()), limit))


@lru_cache(maxsize=8192)
def _option_pattern(option: tuple[str, ...]) -> re.Pattern[str]:
    """An option's words as whole words, case-insensitive, at most _MAX_GAP non-word
    characters apart: the same matching as :meth:`_Words.match_at`, run by the regex engine."""
    gap = rf"[\W_]{{1,{_MAX_GAP}}}"
    return re.compile(r"(?<![^\W_])" + gap.join(re.escape(w) for w in option) + r"(?![^\W_])", re.I)


class _AllWords:
    """A text searched for every occurrence of an option's text.

    Used only for outputs that reach the weaker tiers: most outputs are
    decided by a commitment, which needs just the few words after a cue.
    """

    def __init__(self, text: str):
        self.text = text

    def occurrences(self, option: tuple[str, ...]) -> list[tuple[int, int]]:
        return [m.span() for m in _option_pattern(option).finditer(self.text)]


def final_section(output: str) -> tuple[str, str]:
    """(text to score, "final" | "whole"): the last final-response section if any."""
    last = None
    for last in _FINAL_HEADING.finditer(output):
        pass
    if last is None:
        return output, "whole"
    return output[last.end():], "final"


def _negated(text: str, start: int, end: int) -> bool:
    """Whether the mention text[start:end] is denied ("A is wrong", "not B")."""
    if _NEGATION_AFTER.match(text, end):
        return True
    return _NEGATION_BEFORE.search(text[max(0, start - _NEGATION_WINDOW):start]) is not None


# -- tier 1: answer statements ---------------------------------------------

def _letter_after_cue(item: _Item, text: str, pos: int) -> tuple[str, int] | None:
    """(letter, end) of a letter statement starting at pos, or None."""
    m = item.rx.letter_statement.match(text, pos)
    if not m:
        return None
    letter = m.group("letter")
    if _GENUS.match(text, m.end()):  # "C. difficile", unless it is C's own text ("B. no")
        own = item.option_words.get(letter)
        after = _words_after(text, m.end(), _GAP_AFTER_LABEL, len(own)) if own else None
        if after is None or after.match_at(0, own) is None:
            return None
    if letter == "A":  # "Answer: A patient with ..." is the article
        nxt = _NEXT_TOKEN.match(text, m.end())
        if nxt and nxt.group(1) not in _A_CONTINUATIONS:
            return None
    return letter, m.end()


def _option_text_after(item: _Item, text: str, pos: int) -> tuple[str, int] | None:
    """(letter, end) of the longest option text starting right at pos, or None.

    Quotes, bold markers, "either"/"both" and an article may come first:
    "the answer is **a TRUS-guided biopsy**".
    """
    t = _words_after(text, pos, _GAP_BEFORE_TEXT, item.lookahead_words)
    if t is None:
        return None
    starts = [0]
    if t.words[0] in ("either", "both") and len(t.words) > 1:
        starts.append(1)
    if t.words[starts[-1]] in ("a", "an", "the") and starts[-1] + 1 < len(t.words):
        starts.append(starts[-1] + 1)
    for j in starts:
        best = None
        for letter, words in item.option_words.items():
            end = t.match_at(j, words)
            if end is not None and (best is None or end > best[1]):
                best = (letter, end)
        if best:
            return best
    return None


def _answer_after_cue(item: _Item, text: str, pos: int) -> tuple[str, int] | None:
    """The answer a cue introduces: (letter or _AMBIGUOUS, end), or None."""
    found = _letter_after_cue(item, text, pos)
    if found:
        letter, end = found
        sep = _LABEL_SEP.match(text, end)
        labelled = _label_text(item, letter, text, sep.end()) if sep else None
        if labelled and labelled[0] == _CONFLICT:
            return labelled  # "the answer is A. <text of option C>"
        if labelled:
            end = labelled[1]  # "C. 28 Lp/mm or D. 30 Lp/mm" is still two answers
        alt = item.rx.letter_alternative.match(text, end)
        if alt and alt.group("letter") != letter:
            return _AMBIGUOUS, alt.end()
        return letter, end
    found = _option_text_after(item, text, pos)
    if found:
        letter, end = found
        conj = _ALT_TEXT_PREFIX.match(text, end)
        if conj:
            other = _option_text_after(item, text, conj.end())
            if other and other[0] != letter:
                return _AMBIGUOUS, other[1]
        return letter, end
    return None


def _leading_generic(item: _Item, text: str) -> tuple[int, str, str] | None:
    """A yes/no/maybe-style option as the section's first word: "Yes, ..."."""
    if not item.generic:
        return None
    t = _words_after(text, 0, _GAP_BEFORE_LEADING, item.lookahead_words)
    if t is None:
        return None
    for letter in item.generic:
        end = t.match_at(0, item.option_words[letter])
        if end is not None and _LEADING_END.match(text, end):
            return t.starts[0], letter, text[t.starts[0]:end]
    return None


def _label_text(item: _Item, letter: str, text: str, pos: int) -> tuple[str, int] | None:
    """What follows a letter label at pos: (its own letter, end) when the words are
    that option's text, (_CONFLICT, end) when they are exactly another option's
    text ("A. <text of option C>"), else None."""
    after = _words_after(text, pos, _GAP_BEFORE_TEXT, item.lookahead_words)
    if after is None:
        return None
    own = item.option_words.get(letter)
    end = after.match_at(0, own) if own else None
    if end is not None:
        return letter, end
    best = None
    for other, words in item.option_words.items():
        if other == letter or other in item.generic or (own and own[:len(words)] == words):
            continue
        e = after.match_at(0, words)
        if e is not None and _TEXT_END.match(text, e) and (best is None or e > best[1]):
            best = (_CONFLICT, e)
    return best


def _answer_events(item: _Item, text: str) -> list[tuple[int, str, str, str]]:
    """Commitments and retractions in the order they occur.

    Each event is (position, "commit" | "retract", letter or _AMBIGUOUS or
    _CONFLICT, evidence). See the module docstring for what each form is.
    """
    events: list[tuple[int, str, str, str]] = []

    def commit(pos: int, letter: str, evidence: str) -> None:
        events.append((pos, "commit", letter, evidence.strip()))

    def retract(pos: int, letter: str, evidence: str) -> None:
        events.append((pos, "retract", letter, evidence.strip()))

    leading = _leading_generic(item, text)
    if leading:
        commit(*leading)
    for cue in _ANSWER_CUE.finditer(text):
        if _CUE_DENIED.search(text, max(0, cue.start() - 24), cue.start()):
            continue  # "the wrong answer is A", "not the correct answer: B"
        answer = _answer_after_cue(item, text, cue.end())
        if answer is None:
            continue
        letter, end = answer
        evidence = text[cue.start():end]
        if cue.group("neg"):
            # "the answer is not A but B": only what follows "but" is asserted.
            but = _BUT.match(text, end)
            asserted = _answer_after_cue(item, text, but.end()) if but else None
            if asserted is not None:
                commit(cue.start(), asserted[0], text[cue.start():asserted[1]])
            elif letter not in (_AMBIGUOUS, _CONFLICT):
                retract(cue.start(), letter, evidence)
        elif _QUESTION.match(text, end):
            continue  # "Is the answer A?" asks, it does not answer
        elif letter not in (_AMBIGUOUS, _CONFLICT) and _STATUS_NEGATION.match(text, end):
            retract(cue.start(), letter, evidence)  # "Answer: B is wrong"
        else:
            commit(cue.start(), letter, evidence)
    for m in item.rx.letter_is_correct.finditer(text):
        # The letter must open a sentence or carry a label (see _LETTER_OPENER).
        start = m.start("letter")
        if _LETTER_OPENER.search(text, max(0, start - 16), start) and not _QUESTION.match(text, m.end()):
            if _ANSWER_NOUN.match(text, m.end()):
                commit(start, m.group("letter"), m.group(0))
            else:  # "B is correct": maybe the answer, maybe "statement B is true"
                events.append((start, "weak", m.group("letter"), m.group(0).strip()))
    for m in item.rx.letter_is_wrong.finditer(text):
        start = m.start("letter")  # "..., B is incorrect" retracts too
        if _LETTER_OPENER.search(text, max(0, start - 16), start) or _COMMA.search(text, max(0, start - 3), start):
            retract(start, m.group("letter"), m.group(0))
    for m in item.rx.copula_label.finditer(text):
        if not _COPULA_BEFORE_LABEL.search(text, max(0, m.start() - 24), m.start()):
            continue
        # "The medium of choice is B. Mitis salivarius agar": a letter label
        # stated as the complement of "is" (not "C. difficile").
        answer = _answer_after_cue(item, text, m.start())
        if answer is None or _QUESTION.match(text, answer[1]):
            continue
        letter, end = answer
        if letter not in (_AMBIGUOUS, _CONFLICT) and _STATUS_NEGATION.match(text, end):
            retract(m.start(), letter, text[m.start():end])
        else:
            commit(m.start(), letter, text[m.start():end])
    for m in _TEXT_THEN_VERDICT.finditer(text):
        # "<option text> is the correct answer" / "would be the most relevant
        # among the given options": the option's text stated as the answer.
        before = _BEFORE_VERDICT.search(text, max(0, m.start() - 100), m.start())
        found = _option_text_ending_at(item, text, before.start() + 1) if before else None
        if found:
            commit(found[1], found[0], text[found[1]:m.end()])
    events.extend(_answer_lines(item, text))
    events.sort(key=lambda e: e[0])
    return events


def _option_text_ending_at(item: _Item, text: str, end: int) -> tuple[str, int] | None:
    """(letter, start) of the longest non-generic option text whose last word
    ends exactly at ``end``, or None."""
    window = text[max(0, end - 400):end]
    t = _Words(window, _WORD.finditer(window))
    best = None
    for letter, words in item.option_words.items():
        i = len(t.words) - len(words)
        if letter in item.generic or i < 0 or t.match_at(i, words) != len(window):
            continue
        start = end - len(window) + t.starts[i]
        if best is None or start < best[1]:
            best = (letter, start)
    return best


def _answer_lines(item: _Item, text: str) -> list[tuple[int, str, str, str]]:
    """Lines that state an answer by a label: "C", "**C.**", "C. <C's text>",
    "(C) <C's text>", and the section's first line when it opens with "C.
    <C's text>" and goes on in a sentence. Lines that list options one after
    another (the question's option list echoed, or a one-line-per-option
    walk-through) are not answers: a line counts only when no other label line
    stands next to it (blank lines aside)."""
    lines: list[tuple[int, str, str, bool]] = []  # (pos, letter, evidence, is_answer)
    first = True
    for m in item.rx.line_label.finditer(text):
        letter, rest = m.group("letter"), m.group("rest")
        is_first, first = first and not text[:m.start()].strip(), False
        body = _LINE_MARKUP.sub("", rest)
        if not body:
            if m.group("sep") or "*" in m.group(0) or m.group(0).strip() == letter:
                lines.append((m.start("letter"), letter, m.group(0), True))
            continue
        if _GENUS.match(text, m.end("sep") - 1 if m.group("sep") == "." else m.end("letter")) \
                and _label_text(item, letter, text, m.start("rest")) is None:
            continue  # "C. difficile colitis"
        if not m.group("sep"):
            continue  # "A patient with ...": the article
        own = item.option_words.get(letter, ())
        # A line far longer than any option's text discusses; it does not state an option.
        words = _words(body) if len(body) <= 2 * item.max_text_chars + 40 else []
        owner = item.by_norm.get("".join(words)) if words else None
        if owner is not None:  # the whole line is one option's text
            lines.append((m.start("letter"), letter if owner == letter else _CONFLICT, m.group(0), True))
            continue
        if (own and words and len(words) <= len(own) + 2 and words[0][:3] == own[0][:3]
                and not _GLOSS.search(body)):
            # The option's text, reworded or misspelled ("Mitis" for "Mitus"):
            # the label is what commits; the words only restate it.
            lines.append((m.start("letter"), letter, m.group(0), True))
            continue
        labelled = _label_text(item, letter, text, m.start("rest")) if is_first else None
        if labelled and labelled[0] == letter and not _GLOSS.match(text, labelled[1]) \
                and not _STATUS_NEGATION.match(text, labelled[1]):
            # The section opens with "C. <C's text> is ..." : its answer first
            # (unless the next letter's line follows: then it walks the options).
            lines.append((m.start("letter"), letter, text[m.start():labelled[1]], "leading"))
            continue
        lines.append((m.start("letter"), letter, m.group(0), False))  # a discussion line

    letters = item.letters
    if lines and lines[0][3] == "leading":
        nxt = letters[letters.index(lines[0][1]) + 1:letters.index(lines[0][1]) + 2]
        if any(letter == nxt for _, letter, _, _ in lines[1:]):
            lines[0] = lines[0][:3] + (False,)

    events = []
    for i, (pos, letter, evidence, is_answer) in enumerate(lines):
        if not is_answer:
            continue
        neighbours = [lines[j] for j in (i - 1, i + 1) if 0 <= j < len(lines)]
        if any(_only_blank_between(text, pos, other[0]) for other in neighbours):
            continue  # part of a list of options
        events.append((pos, "commit", letter, evidence.strip()))
    # Three or more answer lines in letter order ("A. <A's text>" ... "B. <B's
    # text>" ... "C. <C's text>") walk through the options: none of them answers.
    kept, run = [], []
    for event in events + [(len(text), "commit", _CONFLICT, "")]:
        if run and (event[2] == _CONFLICT or run[-1][2] == _CONFLICT
                    or letters.find(event[2]) <= letters.find(run[-1][2])):
            if len(run) < 3:
                kept.extend(run)
            run = []
        run.append(event)
    return kept


def _only_blank_between(text: str, a: int, b: int) -> bool:
    """Whether the lines holding offsets a and b are adjacent (blank lines aside)."""
    lo, hi = sorted((a, b))
    between = text[text.find("\n", lo) + 1 if "\n" in text[lo:hi] else hi:hi]
    between = between[:between.rfind("\n") + 1] if "\n" in between else ""
    return not between.strip()


def _copula_texts(item: _Item, all_words: _AllWords) -> list[tuple[int, str, str]]:
    """(position, letter, evidence) of each "... is <option text>." sentence."""
    text = all_words.text
    found = []
    for letter, words in item.option_words.items():
        if letter in item.generic:
            continue
        for start, end in all_words.occurrences(words):
            cop = _COPULA_BEFORE.search(text, max(0, start - 40), start)
            if cop is None or cop.group("neg") or not _SENTENCE_END.match(text, end):
                continue
            conj = _ALT_TEXT_PREFIX.match(text, end)
            if conj and _option_text_after(item, text, conj.end()):
                continue  # "is A or B."
            found.append((cop.start(), letter, text[cop.start():end]))
    found.sort()
    return found


def _settle(events: list[tuple[int, str, str, str]]) -> tuple[str | None, str]:
    """The standing commitment after every event: the last one, unless a later
    retraction of the same letter cancelled it. A bare "B is correct" counts
    only when nothing stronger commits: in a response that states its answer,
    it judges a statement true ("Option C is correct as ...")."""
    strong = any(kind == "commit" for _, kind, _, _ in events)
    current, evidence = None, ""
    for _, kind, letter, ev in events:
        if kind == "commit" or (kind == "weak" and not strong):
            current, evidence = letter, ev
        elif kind == "retract" and letter == current:
            current, evidence = None, ev
    return current, evidence


# -- tier 2: labelled options ----------------------------------------------

def _labelled(item: _Item, text: str, all_words: _AllWords) -> list[tuple[int, str, str]]:
    """Non-negated labelled mentions as (position, letter, evidence)."""
    # letter position -> [letter, evidence, denied]; a mention is denied when
    # any of the forms that found it is denied ("A. PSA - not specific").
    found: dict[int, list] = {}

    def keep(letter_pos: int, letter: str, start: int, end: int) -> None:
        entry = found.setdefault(letter_pos, [letter, text[start:end].strip(), False])
        entry[2] = entry[2] or _negated(text, start, end)

    for m in item.rx.option_mentions.finditer(text):
        if not m.group("more"):  # "options A and C" lists, it does not choose
            keep(m.start("letter"), m.group("letter"), m.start(), m.end())
    for rx in item.rx.labels:
        for m in rx.finditer(text):
            keep(m.start("letter"), m.group("letter"), m.start(), m.end())
    for m in item.rx.label_then_text.finditer(text):
        own = item.option_words.get(m.group("letter"))
        after = _words_after(text, m.end(), _GAP_BEFORE_TEXT, len(own)) if own else None
        end = after.match_at(0, own) if after is not None else None
        if end is not None:
            keep(m.start("letter"), m.group("letter"), m.start(), end)
    for letter in item.generic:  # "**Yes**", "**no.**"
        for start, end in all_words.occurrences(item.option_words[letter]):
            if _BOLD_OPEN.search(text, max(0, start - 4), start) and _BOLD_CLOSE.match(text, end):
                keep(start, letter, start, end)
    return sorted((pos, letter, ev) for pos, (letter, ev, denied) in found.items() if not denied)


# -- tier 3: option text alone ----------------------------------------------

def _names_letters(item: _Item, text: str) -> bool:
    """Whether the text names any option by its letter ("(B)", "option C", "B." on a line)."""
    return (item.rx.option_mentions.search(text) is not None
            or any(rx.search(text) is not None for rx in item.rx.labels))


def _text_mentions(item: _Item, t: _AllWords) -> dict[str, str]:
    """Options whose text occurs on its own and not denied: letter -> evidence."""
    spans = [(start, end, letter)
             for letter, words in item.option_words.items() if letter not in item.generic
             for start, end in t.occurrences(words)]
    found: dict[str, str] = {}
    for start, end, letter in spans:
        # "iron" inside "iron deficiency anaemia" is a mention of the longer option.
        inside_longer = any(s <= start and end <= e and (e - s) > (end - start)
                            for s, e, other in spans if other != letter)
        if not inside_longer and not _negated(t.text, start, end):
            found.setdefault(letter, t.text[start:end])
    return found


def _decide(letters: list[str], rule: str, evidence: str, section: str) -> Extraction:
    distinct = sorted(set(letters))
    if len(distinct) == 1 and distinct[0] != _AMBIGUOUS:
        return Extraction(distinct[0], rule, evidence=evidence, section=section)
    return Extraction(None, "ambiguous", evidence=evidence, section=section)


def extract(output: str, options: Mapping[str, str]) -> Extraction:
    """The option the output commits to (``letter``), or None with the reason in ``rule``."""
    if not options:
        raise ValueError("an item needs at least one option")
    if is_empty_output(output):
        return Extraction(None, "empty")
    text, section = final_section(output)
    item = _item(options)

    events = _answer_events(item, text)
    if any(kind in ("commit", "weak") for _, kind, _, _ in events):
        letter, evidence = _settle(events)
        if letter == _CONFLICT:
            return Extraction(None, "conflict", evidence=evidence, section=section)
        if letter is None:
            return Extraction(None, "retracted", evidence=evidence, section=section)
        return _decide([letter], "statement", evidence, section)

    all_words = _AllWords(text)
    complements = _copula_texts(item, all_words)
    if complements:
        _, letter, evidence = complements[-1]  # the last one wins
        return _decide([letter], "option_text", evidence, section)

    labelled = _labelled(item, text, all_words)
    if labelled:
        return _decide([letter for _, letter, _ in labelled], "labelled",
                       "; ".join(ev for _, _, ev in labelled)[:200], section)

    # An option's text named once, in a response that names no option by its letter ("Apo B-48
    # is found in chylomicrons."). Where letters are named (even only to deny them), the options
    # are being discussed, and a lone text mention is one more mention, not the answer.
    if events or _names_letters(item, text):
        return Extraction(None, "no_answer", section=section)
    mentions = _text_mentions(item, all_words)
    if mentions:
        return _decide(list(mentions), "option_text",
                       "; ".join(mentions.values())[:200], section)
    return Extraction(None, "no_answer", section=section)


class StrictScorer:
    name = NAME

    def extract(self, output: str, options: Mapping[str, str]) -> Extraction:
        return extract(output, options)
