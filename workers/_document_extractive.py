"""A local extractive analysis of a document's text, standard library only: the sentences that best represent the
text, in their original order, and its most frequent meaningful words.

Sentences are scored by the frequencies of their words (stopwords of English and Portuguese left out), relative
to the text's most frequent word, so a sentence full of the document's main terms ranks first. It is
deterministic: the same text always gives the same summary and keywords.
"""

from __future__ import annotations

import math
import re
from collections import Counter

#: words too common to say what a text is about (English)
STOPWORDS_EN = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once
only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves may might must shall upon within without
per via its one two three many much every however therefore thus page
""".split())
#: words too common to say what a text is about (Portuguese)
STOPWORDS_PT = frozenset("""
a ao aos aquela aquelas aquele aqueles aquilo as até com como da das de dela delas dele deles depois do dos e ela
elas ele eles em entre era eram essa essas esse esses esta estas este estes eu foi foram há isso isto já lhe lhes
mais mas me mesmo meu meus minha minhas muito na nas nem no nos nossa nossas nosso nossos num numa não nós o os ou
para pela pelas pelo pelos por qual quando que quem se sem ser seu seus si sua suas são só também te tem têm tu
tua tuas um uma umas uns você vocês vos à às é está estão ser sobre pode podem foi será serão ainda assim cada
onde porque pois todo toda todos todas página
""".split())
STOPWORDS = STOPWORDS_EN | STOPWORDS_PT
#: stopwords of one language only, to guess which language a text is in
_ONLY_EN = STOPWORDS_EN - STOPWORDS_PT
_ONLY_PT = STOPWORDS_PT - STOPWORDS_EN

#: sentences in the summary, and keywords, per analysis type
SUMMARY_SENTENCES = {"summary": 3, "complete": 5}
KEYWORDS = {"summary": 10, "complete": 20}
#: words a sentence needs to be a summary candidate (shorter ones are headings, captions, page numbers)
MIN_SENTENCE_WORDS = 5
#: characters: longer "sentences" are tables or run-on extraction debris, not summary material
MAX_SENTENCE_CHARS = 600
#: characters: a line this short without final punctuation is taken for a heading, not part of a sentence
HEADING_CHARS = 40
#: share of a text's words that must be one language's stopwords to name the language
LANGUAGE_THRESHOLD = 0.05

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_HYPHENATED_BREAK = re.compile(r"([^\W\d_])-\n([^\W\d_A-Z])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|\f")
# a sentence ends at . ! ? or … (possibly followed by a closing quote or bracket) and then white space
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’»)\]])\s+")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr sra dra st vs etc e.g i.e fig no nº p pp vol cf approx art inc ltd".split()
)
_TERMINAL = (".", "!", "?", "…", ":", ";", '"', "”", "’", ")")


def analyse(text: str, analysis_type: str) -> dict:
    """The extractive analysis of `text`: `summary` and `keywords`, plus `statistics` and `language` for a
    complete analysis."""
    sentences = split_sentences(text)
    words = content_words(text)
    frequencies = Counter(words)
    result = {
        "summary": " ".join(top_sentences(sentences, frequencies, SUMMARY_SENTENCES[analysis_type])),
        "keywords": keywords(words, KEYWORDS[analysis_type]),
    }
    if analysis_type == "complete":
        all_words = [w.lower() for w in _WORD.findall(text)]
        result["statistics"] = {
            "characters": len(text),
            "words": len(all_words),
            "unique_words": len(set(all_words)),
            "sentences": len(sentences),
        }
        result["language"] = guess_language(all_words)
    return result


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, in order, with line breaks inside a sentence joined (hyphenated words mended)."""
    text = _HYPHENATED_BREAK.sub(r"\1\2", text)
    sentences: list[str] = []
    for block in _blocks(text):
        sentences.extend(_sentences_of(block))
    return sentences


def _blocks(text: str) -> list[str]:
    """Paragraphs as single lines; a short line without final punctuation (a heading) is a block of its own."""
    blocks: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        current: list[str] = []
        for line in (line.strip() for line in paragraph.splitlines()):
            if not line:
                continue
            if len(line) <= HEADING_CHARS and not line.endswith(_TERMINAL):
                blocks.extend([" ".join(current), line] if current else [line])
                current = []
            else:
                current.append(line)
        if current:
            blocks.append(" ".join(current))
    return [block for block in blocks if block]


def _sentences_of(block: str) -> list[str]:
    """Split one block at sentence ends, mending splits after abbreviations and before lower-case words."""
    pieces = [piece.strip() for piece in _SENTENCE_BREAK.split(block) if piece and piece.strip()]
    sentences: list[str] = []
    for piece in pieces:
        if sentences and (_ends_with_abbreviation(sentences[-1]) or piece[0].islower()):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _ends_with_abbreviation(sentence: str) -> bool:
    last = sentence.rsplit(None, 1)[-1].lower().rstrip(".")
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())  # "J. Smith", "p. 4"


def content_words(text: str) -> list[str]:
    """The words of `text` that carry meaning: lower-case, three letters or more, no stopwords."""
    return [w for w in (m.lower() for m in _WORD.findall(text)) if len(w) >= 3 and w not in STOPWORDS]


def top_sentences(sentences: list[str], frequencies: Counter, count: int) -> list[str]:
    """The `count` best-scoring candidate sentences, in their original order."""
    candidates = [(i, s) for i, s in enumerate(sentences) if _candidate(s)]
    if not candidates:  # nothing sentence-like (a form, a table): fall back to whatever text there is
        candidates = [(i, s[:MAX_SENTENCE_CHARS]) for i, s in enumerate(sentences) if content_words(s)]
    if not candidates or not frequencies:
        return []
    top = max(frequencies.values())
    scored = sorted(candidates, key=lambda item: (-_score(item[1], frequencies, top), item[0]))
    return [sentence for _, sentence in sorted(scored[:count])]


def _candidate(sentence: str) -> bool:
    return len(sentence) <= MAX_SENTENCE_CHARS and len(_WORD.findall(sentence)) >= MIN_SENTENCE_WORDS


def _score(sentence: str, frequencies: Counter, top: int) -> float:
    """Relative frequencies of the sentence's words, summed and divided by the square root of their number: long
    sentences gain from more terms but not in proportion, so neither very short nor very long ones dominate."""
    words = content_words(sentence)
    if not words:
        return 0.0
    return sum(frequencies[w] / top for w in words) / math.sqrt(len(words))


def keywords(words: list[str], count: int) -> list[str]:
    """The `count` most frequent content words; ties go to the word that appears first."""
    first_seen: dict[str, int] = {}
    for position, word in enumerate(words):
        first_seen.setdefault(word, position)
    frequencies = Counter(words)
    ranked = sorted(frequencies, key=lambda w: (-frequencies[w], first_seen[w]))
    return ranked[:count]


def guess_language(words: list[str]) -> str:
    """"en", "pt" or "unknown", from the share of each language's own stopwords among `words`."""
    if not words:
        return "unknown"
    english = sum(w in _ONLY_EN for w in words)
    portuguese = sum(w in _ONLY_PT for w in words)
    best, hits = ("en", english) if english >= portuguese else ("pt", portuguese)
    return best if hits / len(words) >= LANGUAGE_THRESHOLD else "unknown"
