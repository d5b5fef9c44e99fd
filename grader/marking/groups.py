"""Answer groups: one question's similar answers put together, so that one rubric decision can be
applied to a whole group after a look.

How: each answer becomes two TF-IDF vectors, one of word 1-2-grams (shared phrasing) and one of
character 3-5-grams within words (`char_wb`: robust to typos, plurals and inflections, which
students' short answers are full of). Both are L2-normalised and set side by side, so the cosine
similarity of two answers is the mean of their word and character similarities. Agglomerative
clustering with average linkage then joins answers while the mean distance between two groups is
under `[marking] group_distance` (assignment.toml): no number of groups to guess, and a group's
members are all close to each other on average, not only along a chain. Everything is offline
(scikit-learn), nothing is downloaded.

Every answer is in exactly one group: answers with no near neighbour are groups of one, and the
missing or empty answers form one group of their own (they are marked alike: by the rubric
alone). Groups are deterministic (answers are taken in submission order, and the clustering
has no randomness) and numbered 1, 2, ... by size, largest first, then by first submission.

The groups of a question are stored in the marking database with a digest of its answers (and
of the grouping settings): a page reads them in one query, and they are recomputed only when an
answer or a setting changed.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from ..config import MarkingSettings
from .store import MarkStore


class AnswerGroup(BaseModel):
    """One group of a question's answers."""

    id: int                     # 1 = the largest group; ties broken by the first submission
    question: str
    submissions: list[str]      # sorted
    representative: str         # the member closest to the others: the one to read first
    size: int
    missing: bool = False       # the group of missing or empty answers


class _Answer(BaseModel):
    submission: str
    text: str                   # "" for a missing answer
    digest: str


def _is_blank(row) -> bool:
    return not row["found"] or not row["text"].strip()


def _load(store: MarkStore, question_id: str) -> list[_Answer]:
    return [_Answer(submission=r["submission"], text="" if _is_blank(r) else r["text"], digest=r["digest"])
            for r in store.answers(question_id)]


def answers_digest(answers: list[_Answer], settings: MarkingSettings) -> str:
    """What the groups depend on: every (submission, answer digest) and the grouping settings."""
    payload = json.dumps([settings.model_dump(), [(a.submission, a.digest) for a in answers]])
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def _vectors(texts: list[str], settings: MarkingSettings):
    """Word and character TF-IDF side by side, each L2-normalised (so cosine = their mean)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(analyzer="word", ngram_range=tuple(settings.group_word_ngrams), lowercase=True,
                           sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(settings.group_char_ngrams), lowercase=True,
                           sublinear_tf=True)
    return hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()


def cluster_labels(texts: list[str], settings: MarkingSettings) -> tuple[list[int], list[float]]:
    """A cluster label per text, and each text's mean distance to the other members of its
    cluster (0 for a cluster of one): what picks a group's representative."""
    import numpy as np
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics.pairwise import cosine_distances

    if len(texts) < 2:
        return [0] * len(texts), [0.0] * len(texts)
    distances = cosine_distances(_vectors(texts, settings))   # 1 - the mean of two cosines: 0..1
    np.fill_diagonal(distances, 0.0)
    labels = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                     distance_threshold=settings.group_distance).fit_predict(distances)
    spread = []
    for i, label in enumerate(labels):
        members = np.flatnonzero(labels == label)
        spread.append(float(distances[i, members].sum() / max(len(members) - 1, 1)))
    return [int(label) for label in labels], spread


def compute_groups(question_id: str, answers: list[_Answer], settings: MarkingSettings) -> list[AnswerGroup]:
    """The groups of one question's answers (no database involved)."""
    blank = [a.submission for a in answers if not a.text]
    written = [a for a in answers if a.text]
    labels, spread = cluster_labels([a.text for a in written], settings)
    members: dict[int, list[tuple[str, float]]] = {}
    for answer, label, distance in zip(written, labels, spread):
        members.setdefault(label, []).append((answer.submission, distance))
    groups = [
        (sorted(s for s, _ in group), min(group, key=lambda m: (m[1], m[0]))[0], False)
        for group in members.values()
    ]
    if blank:
        groups.append((sorted(blank), min(blank), True))
    groups.sort(key=lambda g: (-len(g[0]), g[0][0]))
    return [AnswerGroup(id=number, question=question_id, submissions=subs, representative=rep,
                        size=len(subs), missing=missing)
            for number, (subs, rep, missing) in enumerate(groups, start=1)]


def answer_groups(store: MarkStore, question_id: str) -> list[AnswerGroup]:
    """The question's answer groups, from the database when its answers are unchanged since they
    were computed, else computed now and stored."""
    settings = store.config.marking
    answers = _load(store, question_id)
    digest = answers_digest(answers, settings)
    stored = store.stored_groups(question_id, digest)
    if stored is not None:
        groups = _from_stored(question_id, stored, answers)
        if groups is not None:
            return groups
    groups = compute_groups(question_id, answers, settings)
    store.store_groups(question_id, digest, _to_stored(groups))
    return groups


def _to_stored(groups: list[AnswerGroup]) -> dict[str, tuple[int, bool]]:
    """Submission -> (its group's id, whether it is the group's representative)."""
    return {s: (g.id, s == g.representative) for g in groups for s in g.submissions}


def _from_stored(question_id: str, stored: dict[str, tuple[int, bool]], answers: list[_Answer]) -> list[AnswerGroup] | None:
    """The groups back from their stored numbers; None if the rows do not make whole groups
    (written by an older grader), so that they are recomputed."""
    if set(stored) != {a.submission for a in answers}:
        return None
    blank = {a.submission for a in answers if not a.text}
    by_id: dict[int, list[str]] = {}
    representatives: dict[int, str] = {}
    for submission, (group_id, representative) in stored.items():
        by_id.setdefault(group_id, []).append(submission)
        if representative:
            representatives[group_id] = submission
    if set(by_id) != set(range(1, len(by_id) + 1)) or set(representatives) != set(by_id):
        return None
    return [AnswerGroup(id=gid, question=question_id, submissions=sorted(subs), representative=representatives[gid],
                        size=len(subs), missing=bool(blank) and set(subs) == blank)
            for gid, subs in sorted(by_id.items())]
