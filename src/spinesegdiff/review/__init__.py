"""The review page: triage a results folder in the browser, most doubtful case first (``spinesegdiff review``).

- :mod:`~spinesegdiff.review.cases` reads the folder's reports into case records and orders them;
- :mod:`~spinesegdiff.review.volumes` reads a case's label, uncertainty and scan volumes;
- :mod:`~spinesegdiff.review.layers` draws a case's PNG layers (:mod:`~spinesegdiff.review.palette`: the colours);
- :mod:`~spinesegdiff.review.page` writes the HTML from the template in ``assets/``;
- :mod:`~spinesegdiff.review.build` puts these together, atomically;
- :mod:`~spinesegdiff.review.decisions` reads back the triage CSV the page exports.

::

    from spinesegdiff.review import build_review, read_decisions
    page = build_review("out/")                  # out/review.html
    for decision in read_decisions("out-triage.csv"):
        print(decision.path, decision.decision, decision.note)
"""

from __future__ import annotations

from spinesegdiff.review.build import ReviewPage, build_review
from spinesegdiff.review.decisions import DECISIONS, Decision, read_decisions

__all__ = ["DECISIONS", "Decision", "ReviewPage", "build_review", "read_decisions"]
